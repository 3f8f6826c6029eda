package tests

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cairn-backup/cairn/repo"
)

// packBytes is the size of the repository's packs.
func packBytes(t *testing.T, e *Env) int64 {
	t.Helper()
	var n int64
	for _, f := range repoInfos(t, e, repo.PackFile) {
		n += f.Size
	}
	return n
}

// pruneSummary runs prune with --json and returns its summary line.
func pruneSummary(t *testing.T, e *Env, args ...string) map[string]any {
	t.Helper()
	r := e.Must(append([]string{"prune", "--json"}, args...)...)
	return Summary(t, r.Stdout)
}

// pruneVersions backs up four versions of a tree, each changing some files,
// and returns the snapshot ids and the tree each saw.
func pruneVersions(t *testing.T, e *Env, src string) ([]string, []map[string]string) {
	t.Helper()
	file := func(name string) string { return filepath.Join(src, "d"+name[len(name)-1:], name) }
	seed := uint64(0)
	write := func(name string, n int64) {
		seed++
		if err := os.MkdirAll(filepath.Dir(file(name)), 0o755); err != nil {
			t.Fatal(err)
		}
		writeRandomFile(t, file(name), seed, n)
	}
	var ids []string
	var states []map[string]string
	save := func() {
		ids = append(ids, backupID(t, e, src))
		states = append(states, treeState(t, src))
	}
	for _, name := range []string{"f0", "f1", "f2", "f3", "f4", "f5"} {
		write(name, 300<<10)
	}
	write("big", 3<<20) // several chunks
	save()
	write("f1", 200<<10)
	write("f2", 200<<10)
	write("f6", 100<<10)
	save()
	write("f3", 100<<10)
	write("big", 3<<20)
	if err := os.Remove(file("f0")); err != nil {
		t.Fatal(err)
	}
	save()
	write("f4", 100<<10)
	save()
	return ids, states
}

// wantRestores restores each snapshot and compares it with the tree it saw.
func wantRestores(t *testing.T, e *Env, src string, ids []string, states []map[string]string) {
	t.Helper()
	for i, id := range ids {
		target := filepath.Join(e.Dir, fmt.Sprintf("restore-%d-%d", i, time.Now().UnixNano()))
		e.Must("restore", id, "--target", target)
		got := treeState(t, restoredAt(target, src))
		for p, want := range states[i] {
			if got[p] != want {
				t.Errorf("snapshot %s: %s restored as %q, want %q", id[:8], p, got[p], want)
			}
		}
		if len(got) != len(states[i]) {
			t.Errorf("snapshot %s: %d entries restored, want %d", id[:8], len(got), len(states[i]))
		}
		if err := os.RemoveAll(target); err != nil {
			t.Fatal(err)
		}
	}
}

func TestPrune(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	src := filepath.Join(e.Dir, "src")
	ids, states := pruneVersions(t, e, src)
	// Forget the first two snapshots (their files go, as forget removes them).
	for _, id := range ids[:2] {
		removeRepoFile(t, e, repo.Handle{Type: repo.SnapshotFile, Name: id})
	}
	ids, states = ids[2:], states[2:]

	// A dry run says what it would do and changes nothing.
	before := repoListing(t, e)
	r := e.Must("prune", "--dry-run")
	if !strings.Contains(r.Stdout, "would delete") || !strings.Contains(r.Stdout, "nothing was changed") {
		t.Errorf("dry run output:\n%s", r.Stdout)
	}
	dry := pruneSummary(t, e, "--dry-run", "--max-unused", "0")
	if dry["dry_run"] != true || intField(t, dry, "packs_deleted") == 0 || intField(t, dry, "packs_repacked") == 0 {
		t.Errorf("dry run summary %v: want packs to delete and to repack", dry)
	}
	if after := repoListing(t, e); !slices.Equal(before, after) {
		t.Fatalf("a dry run changed the repository:\nbefore %v\nafter  %v", before, after)
	}

	// Packs with nothing in use go; with --max-unused 100 nothing is repacked.
	packsBefore := packBytes(t, e)
	sum := pruneSummary(t, e, "--max-unused", "100")
	if intField(t, sum, "snapshots") != 2 || intField(t, sum, "packs_deleted") == 0 || intField(t, sum, "packs_repacked") != 0 {
		t.Errorf("prune summary %v: want 2 snapshots, packs deleted, none repacked", sum)
	}
	freed := intField(t, sum, "bytes_freed")
	if got := packsBefore - packBytes(t, e); freed <= 0 || got != freed {
		t.Errorf("packs shrank by %d bytes, the summary says %d", got, freed)
	}
	wantRestores(t, e, src, ids, states)

	// --max-unused 0 repacks what is partly unused.
	packsBefore = packBytes(t, e)
	sum = pruneSummary(t, e, "--max-unused", "0")
	if intField(t, sum, "packs_repacked") == 0 || intField(t, sum, "unused_bytes") == 0 {
		t.Errorf("prune --max-unused 0 summary %v: want packs repacked", sum)
	}
	if after := packBytes(t, e); after >= packsBefore || packsBefore-after != intField(t, sum, "bytes_freed") {
		t.Errorf("packs took %d bytes, now %d; the summary says %d freed", packsBefore, after, intField(t, sum, "bytes_freed"))
	}
	if n := len(repoFiles(t, e, repo.IndexFile)); n != 1 {
		t.Errorf("%d index files after prune, want 1", n)
	}
	wantRestores(t, e, src, ids, states)

	// Nothing is left to do, and backups go on from the pruned repository.
	r = e.Must("prune")
	if !strings.Contains(r.Stdout, "nothing to prune") {
		t.Errorf("a second prune:\n%s", r.Stdout)
	}
	ids = append(ids, backupID(t, e, src))
	states = append(states, treeState(t, src))
	wantRestores(t, e, src, ids, states)
}

func TestPruneRefuses(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	src := filepath.Join(e.Dir, "src")
	ids, _ := pruneVersions(t, e, src)
	removeRepoFile(t, e, repo.Handle{Type: repo.SnapshotFile, Name: ids[0]})

	wantErrLine(t, e.Fails(1, "prune", "--max-unused", "150"), "max-unused")
	wantErrLine(t, e.Fails(1, "prune", "--max-unused", "lots"), "max-unused")
	e.Fails(1, "prune", "extra")

	// Another process holds a lock: exit 11, naming it, and nothing changes.
	holder := exec.Command("sleep", "600")
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = holder.Process.Kill(); _ = holder.Wait() })
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	plantLock(t, e, repo.Lock{Time: time.Now(), Hostname: host, Username: "root", PID: holder.Process.Pid})
	before := repoListing(t, e)
	wantErrLine(t, e.Fails(11, "prune"), "locked", fmt.Sprint(holder.Process.Pid))
	if after := repoListing(t, e); !slices.Equal(before, after) {
		t.Fatalf("a locked-out prune changed the repository:\nbefore %v\nafter  %v", before, after)
	}
	_ = holder.Process.Kill()
	_ = holder.Wait()

	// A pack in use is gone: prune refuses and points to check and repair.
	e.Must("prune", "--max-unused", "0")
	var largest repoFile
	for _, f := range repoInfos(t, e, repo.PackFile) {
		if f.Size > largest.Size {
			largest = f
		}
	}
	removeRepoFile(t, e, largest.Handle)
	before = repoListing(t, e)
	wantErrLine(t, e.Fails(1, "prune"), largest.Name[:8], "missing", "cairn check")
	if after := repoListing(t, e); !slices.Equal(before, after) {
		t.Fatalf("prune changed a damaged repository:\nbefore %v\nafter  %v", before, after)
	}
}

// TestPruneMergesSmallPacks: nightly backups of a little change each leave
// small packs behind; a prune with the default settings merges them, and
// every snapshot still restores.
func TestPruneMergesSmallPacks(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	src := filepath.Join(e.Dir, "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	var ids []string
	var states []map[string]string
	for night := range 12 {
		writeRandomFile(t, filepath.Join(src, fmt.Sprintf("night%02d", night)), uint64(night+1), 20<<10)
		ids = append(ids, backupID(t, e, src))
		states = append(states, treeState(t, src))
	}
	before := len(repoFiles(t, e, repo.PackFile))
	if before < 24 {
		t.Fatalf("%d packs after 12 backups, want at least a data and a tree pack each", before)
	}
	sum := pruneSummary(t, e)
	if intField(t, sum, "packs_repacked") < 24 || intField(t, sum, "packs_deleted") != 0 {
		t.Errorf("prune summary %v: want the small packs repacked and none deleted", sum)
	}
	if after := len(repoFiles(t, e, repo.PackFile)); after > 2 {
		t.Errorf("%d packs after prune, %d before: want one per blob type", after, before)
	}
	e.Must("check", "--read-data")
	wantRestores(t, e, src, ids, states)
}

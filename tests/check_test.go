package tests

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cairn-backup/cairn/index"
	"github.com/cairn-backup/cairn/pack"
	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/snapshot"
)

// The tests in this file damage repositories the way disks and people do
// and check that "cairn check" finds it, naming what is damaged, and that
// "cairn repair index" and "cairn repair snapshots" leave a repository
// that checks clean, saying what was lost (docs/cli.md, "cairn check").

// checkSource writes a few files of random content, several chunks each,
// and returns them by their path relative to dir.
func checkSource(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	for i, size := range []int64{3 << 20, 2 << 20, 1 << 20, 5000, 12} {
		rel := fmt.Sprintf("d%d/f%d", i%2, i)
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		writeRandomFile(t, p, uint64(500+i), size)
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		files[rel] = b
	}
	return files
}

// chkPacks returns the headers of the repository's packs of type bt.
func chkPacks(t *testing.T, e *Env, bt repo.BlobType) map[repo.ID][]repo.PackedBlob {
	t.Helper()
	ctx := context.Background()
	r := e.OpenRepo()
	out := map[repo.ID][]repo.PackedBlob{}
	err := r.ListIDs(ctx, repo.PackFile, func(id repo.ID, size int64) error {
		hdr, err := pack.LoadHeader(ctx, r.Backend(), r.Key(), id, size)
		if err != nil {
			return err
		}
		if len(hdr) > 0 && hdr[0].Type == bt {
			out[id] = hdr
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// chkFlipByte changes one byte of a stored file, in place (through the
// backend: a local repository's files are read-only, which a rename over
// them does not mind).
func chkFlipByte(t *testing.T, e *Env, h repo.Handle, off int64) {
	t.Helper()
	ctx := context.Background()
	b, err := repo.ReadAll(ctx, e.Backend(), h)
	if err != nil {
		t.Fatal(err)
	}
	b[off] ^= 0x20
	if err := e.Backend().Save(ctx, h, bytes.NewReader(b), int64(len(b))); err != nil {
		t.Fatal(err)
	}
}

// chkFilesUsing returns the paths, in the latest snapshot, of the files
// whose content includes data blob b.
func chkFilesUsing(t *testing.T, e *Env, b repo.ID) []string {
	t.Helper()
	ctx := context.Background()
	r := e.OpenRepo()
	idx, err := index.Load(ctx, r, index.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer idx.Close()
	store := pack.NewStore(r, idx)
	list, err := snapshot.List(ctx, r, nil)
	if err != nil || len(list) == 0 {
		t.Fatalf("snapshots: %v", err)
	}
	var paths []string
	err = snapshot.Walk(ctx, store, list[len(list)-1].Tree, func(path string, n *snapshot.Node) error {
		if slices.Contains(n.Content, b) {
			paths = append(paths, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return paths
}

// chkRestored compares a restore of src under target with files; absent
// lists the files that must not be there.
func chkRestored(t *testing.T, target, src string, files map[string][]byte, absent map[string]bool) {
	t.Helper()
	for rel, want := range files {
		got, err := os.ReadFile(filepath.Join(target, src, rel))
		switch {
		case absent[rel] && err == nil:
			t.Errorf("%s was restored (%d bytes), but its data is lost", rel, len(got))
		case absent[rel]:
		case err != nil:
			t.Errorf("%s: %v", rel, err)
		case !bytes.Equal(got, want):
			t.Errorf("%s: restored content differs", rel)
		}
	}
}

func TestCheckHealthyRepository(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	src := filepath.Join(e.Dir, "src")
	checkSource(t, src)
	e.Must("backup", src)
	e.Must("backup", src, "--tag", "second")
	for _, args := range [][]string{
		{"check"},
		{"check", "--read-data"},
		{"check", "--read-data-subset", "1/2"},
		{"check", "--read-data-subset", "2/2"},
		{"check", "--read-data-subset", "50%"},
	} {
		r := e.Must(args...)
		if !strings.Contains(r.Stdout, "no errors were found") || strings.Contains(r.Stdout, "note:") || r.Stderr != "" {
			t.Errorf("%s", r)
		}
	}
	// The two groups of 1/2 and 2/2 read every pack between them, once.
	packs := len(repoFilesOf(t, e, repo.PackFile))
	read := 0
	for _, sub := range []string{"1/2", "2/2"} {
		m := JSONLines(t, e.Must("check", "--json", "--read-data-subset", sub).Stdout)
		s := m[len(m)-1]
		if s["message_type"] != "summary" || s["errors"] != 0.0 {
			t.Fatalf("subset %s: %v", sub, s)
		}
		read += int(s["packs_read"].(float64))
	}
	if read != packs {
		t.Fatalf("subsets 1/2 and 2/2 read %d packs, the repository has %d", read, packs)
	}
	m := JSONLines(t, e.Must("check", "--json", "--read-data").Stdout)
	if s := m[len(m)-1]; s["packs_read"] != float64(packs) || s["snapshots"] != 2.0 {
		t.Fatalf("--read-data summary %v, want %d packs read", s, packs)
	}
	for _, bad := range []string{"0/2", "3/2", "1/300", "0%", "120%", "half"} {
		e.Fails(1, "check", "--read-data-subset", bad)
	}
}

func repoFilesOf(t *testing.T, e *Env, ft repo.FileType) []repo.ID {
	t.Helper()
	var ids []repo.ID
	if err := e.OpenRepo().ListIDs(context.Background(), ft, func(id repo.ID, _ int64) error {
		ids = append(ids, id)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return ids
}

func TestCheckDamagedPackRepair(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	src := filepath.Join(e.Dir, "src")
	files := checkSource(t, src)
	e.Must("backup", src)

	// One byte in the middle of the first blob of a data pack.
	var bad repo.ID
	var blob repo.PackedBlob
	for id, hdr := range chkPacks(t, e, repo.DataBlob) {
		bad, blob = id, hdr[0]
		break
	}
	off := int64(blob.Offset + blob.Length/2)
	affected := chkFilesUsing(t, e, blob.ID)
	if len(affected) != 1 {
		t.Fatalf("files using the damaged blob: %v", affected)
	}
	chkFlipByte(t, e, repo.Handle{Type: repo.PackFile, Name: bad.String()}, off)

	// The structure is intact: only reading the data finds the damage.
	e.Must("check")
	r := e.Fails(1, "check", "--read-data")
	if !strings.Contains(r.Stderr, "pack "+bad.Short()) || !strings.Contains(r.Stderr, "cairn: check found ") {
		t.Fatalf("the damaged pack is not named:\n%s", r)
	}
	lines := strings.Split(strings.TrimSpace(r.Stderr), "\n")
	if last := lines[len(lines)-1]; !strings.HasPrefix(last, "cairn: check found ") {
		t.Fatalf("last line %q, want the count of errors", last)
	}
	for _, l := range lines[:len(lines)-1] {
		if !strings.Contains(l, bad.Short()) {
			t.Errorf("error line does not name the pack: %q", l)
		}
	}

	// A restore fails loudly and leaves no wrong bytes behind.
	target := filepath.Join(e.Dir, "target1")
	r = e.Run("restore", "latest", "--target", target)
	if r.Code == 0 {
		t.Fatalf("restore of damaged data succeeded:\n%s", r)
	}
	lost := map[string]bool{}
	for _, p := range affected {
		rel := strings.TrimPrefix(p, src+"/")
		lost[rel] = true
		if !strings.Contains(r.Stderr, rel) {
			t.Errorf("restore does not name %s:\n%s", rel, r)
		}
	}
	chkRestored(t, target, src, files, lost)

	// Headers alone see nothing to repair; the damaged pack stays.
	e.Must("repair", "index")
	e.Fails(1, "check", "--read-data")

	r = e.Must("repair", "index", "--read-data")
	if !strings.Contains(r.Stderr+r.Stdout, bad.Short()) {
		t.Fatalf("repair index does not name the damaged pack:\n%s", r)
	}
	before := e.Snapshots()
	r = e.Must("repair", "snapshots", "--dry-run")
	for _, p := range affected {
		if !strings.Contains(r.Stdout, "would drop file "+p) {
			t.Errorf("dry run does not name %s:\n%s", p, r)
		}
	}
	if after := e.Snapshots(); after[0]["id"] != before[0]["id"] {
		t.Fatal("a dry run replaced the snapshot")
	}
	r = e.Must("repair", "snapshots")
	for _, p := range affected {
		if !strings.Contains(r.Stdout, "dropped file "+p) {
			t.Errorf("repair does not say %s was dropped:\n%s", p, r)
		}
	}
	after := e.Snapshots()
	if len(after) != 1 || after[0]["id"] == before[0]["id"] || after[0]["time"] != before[0]["time"] ||
		!strings.Contains(fmt.Sprint(after[0]["tags"]), "repaired") {
		t.Fatalf("snapshots after the repair: %v", after)
	}
	r = e.Must("check", "--read-data")
	if !strings.Contains(r.Stdout, "no errors were found") {
		t.Fatalf("%s", r)
	}
	target = filepath.Join(e.Dir, "target2")
	e.Must("restore", "latest", "--target", target)
	chkRestored(t, target, src, files, lost)

	// A new backup stores the dropped files again.
	e.Must("backup", src)
	target = filepath.Join(e.Dir, "target3")
	e.Must("restore", "latest", "--target", target)
	chkRestored(t, target, src, files, nil)
	e.Must("check", "--read-data")
}

func TestCheckMissingIndexFile(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	src := filepath.Join(e.Dir, "src")
	files := checkSource(t, src)
	e.Must("backup", src)
	indexes := repoFilesOf(t, e, repo.IndexFile)
	if len(indexes) != 1 {
		t.Fatalf("%d index files after one small backup", len(indexes))
	}
	if err := e.Backend().Remove(context.Background(), repo.Handle{Type: repo.IndexFile, Name: indexes[0].String()}); err != nil {
		t.Fatal(err)
	}
	r := e.Fails(1, "check")
	if !strings.Contains(r.Stderr, "is not in the index") || !strings.Contains(r.Stdout, "note: pack ") {
		t.Fatalf("want missing blobs as errors and the unindexed packs as notes:\n%s", r)
	}
	r = e.Must("repair", "index")
	if !strings.Contains(r.Stdout, "packs were in no index before") {
		t.Fatalf("%s", r)
	}
	r = e.Must("check", "--read-data")
	if strings.Contains(r.Stdout, "note:") {
		t.Fatalf("notes after the repair:\n%s", r)
	}
	target := filepath.Join(e.Dir, "target")
	e.Must("restore", "latest", "--target", target)
	chkRestored(t, target, src, files, nil)
	// Nothing was lost: no snapshot needs rewriting.
	if r := e.Must("repair", "snapshots"); !strings.Contains(r.Stdout, "none references lost data") {
		t.Fatalf("%s", r)
	}
}

func TestCheckOrphanPack(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	src := filepath.Join(e.Dir, "src")
	WriteFile(t, filepath.Join(src, "f"), []byte("content"))
	e.Must("backup", src)
	// A pack written by a backup that died before its index file.
	r := e.OpenRepo()
	data := []byte("stored, never indexed")
	id := repo.ID(r.Key().BlobID(data))
	w := pack.NewWriter(repo.DataBlob, nil)
	w.Add(id, r.Key().Seal(nil, repo.Encode(nil, data, repo.CompressOff), repo.BlobAD(repo.DataBlob, id)), len(data))
	p, err := w.Finish(r.Key())
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Backend().Save(context.Background(), repo.Handle{Type: repo.PackFile, Name: p.ID.String()}, p.Data, p.Size); err != nil {
		t.Fatal(err)
	}
	res := e.Must("check", "--read-data")
	if !strings.Contains(res.Stdout, "note: pack "+p.ID.Short()) || !strings.Contains(res.Stdout, "no errors were found") {
		t.Fatalf("want the orphan pack as a note:\n%s", res)
	}
	m := JSONLines(t, e.Must("check", "--json").Stdout)
	if s := m[len(m)-1]; s["notes"] != 1.0 || s["errors"] != 0.0 {
		t.Fatalf("summary %v", s)
	}
}

// saveLock writes a lock into e's repository, as another process would.
func saveLock(t *testing.T, e *Env, l repo.Lock) {
	t.Helper()
	if _, err := e.OpenRepo().SaveJSON(context.Background(), repo.LockFile, &l); err != nil {
		t.Fatal(err)
	}
}

// lockPIDs returns the PIDs of the repository's locks.
func lockPIDs(t *testing.T, e *Env) []int {
	t.Helper()
	ctx := context.Background()
	r := e.OpenRepo()
	var pids []int
	for _, id := range repoFilesOf(t, e, repo.LockFile) {
		var l repo.Lock
		if err := r.LoadJSON(ctx, repo.LockFile, id, &l); err != nil {
			t.Fatal(err)
		}
		pids = append(pids, l.PID)
	}
	return pids
}

func TestUnlock(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	// A process that has ended: its PID is free.
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	// A live process on this host holds the exclusive lock.
	holder := exec.Command("sleep", "600")
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = holder.Process.Kill(); _ = holder.Wait() })
	now := time.Now()
	saveLock(t, e, repo.Lock{Time: now, Exclusive: true, Hostname: host, Username: "u", PID: gone.Process.Pid})
	saveLock(t, e, repo.Lock{Time: now, Exclusive: true, Hostname: host, Username: "u", PID: holder.Process.Pid})

	r := e.Must("unlock")
	if !strings.Contains(r.Stdout, "removed 1 stale lock") {
		t.Fatalf("%s", r)
	}
	if pids := lockPIDs(t, e); len(pids) != 1 || pids[0] != holder.Process.Pid {
		t.Fatalf("locks left: PIDs %v, want only the live %d", pids, holder.Process.Pid)
	}
	// The live exclusive lock keeps check and repair out.
	e.Fails(11, "check")
	e.Fails(11, "repair", "index")
	if r := e.Must("unlock"); !strings.Contains(r.Stdout, "removed 0 stale locks") {
		t.Fatalf("%s", r)
	}

	r = e.Must("unlock", "--remove-all")
	if !strings.Contains(r.Stdout, "removed 1 lock") {
		t.Fatalf("%s", r)
	}
	if pids := lockPIDs(t, e); len(pids) != 0 {
		t.Fatalf("locks left after --remove-all: %v", pids)
	}
	e.Must("check")
}

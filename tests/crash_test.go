package tests

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cairn-backup/cairn/repo"
)

// The tests in this file stop backups part-way, by SIGKILL (a crash) and by
// SIGINT/SIGTERM (an interruption), and check that the repository stays
// usable and that nothing half-written becomes visible (docs/cli.md, exit
// code 130; docs/format.md, "Writing order").

// crashSource writes about 300 MiB of random data in many files, so that a
// backup of it writes a score of packs. It returns the number of bytes.
func crashSource(t *testing.T, root string) int64 {
	t.Helper()
	var size int64
	for i := range 120 {
		dir := filepath.Join(root, fmt.Sprintf("d%02d", i%12))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		// 1.5 to 3.5 MiB: files span chunk and pack boundaries.
		n := int64(3<<19) + int64(i%5)<<19
		writeRandomFile(t, filepath.Join(dir, fmt.Sprintf("f%03d", i)), uint64(1000+i), n)
		size += n
	}
	return size
}

// killPoint says when to stop a running backup.
type killPoint struct {
	name string
	// reached is polled with the repository's pack and index file counts.
	reached func(packs, indexes int) bool
}

// startBackup starts `cairn backup src`, waits until at reaches its point
// (or the backup ends first) and sends sig. It returns the exit code and
// stderr, and whether the signal was sent while the backup still ran.
func startBackup(t *testing.T, e *Env, src string, at killPoint, sig syscall.Signal) (int, string, bool) {
	t.Helper()
	cmd := e.Cmd("backup", "-q", src)
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	sent := false
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
poll:
	for {
		select {
		case err = <-done:
			break poll
		case <-tick.C:
		}
		if !at.reached(len(repoFiles(t, e, "data")), len(repoFiles(t, e, "index"))) {
			continue
		}
		if serr := cmd.Process.Signal(sig); serr == nil {
			sent = true
		}
		err = <-done
		break poll
	}
	code := 0
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = -int(ws.Signal())
		}
	case err != nil:
		t.Fatal(err)
	}
	return code, errb.String(), sent
}

// recoverAndCheck makes sure the repository is usable after an aborted
// backup: snapshots are listed, every visible pack is whole, a new backup
// succeeds (removing the lock a dead process left) and restores to the
// source byte for byte, as does any snapshot the aborted run managed to
// save. It returns the new backup's summary.
func recoverAndCheck(t *testing.T, e *Env, src string) map[string]any {
	t.Helper()
	before := e.Snapshots()
	for _, p := range repoFiles(t, e, "data") {
		e.Must("cat", "pack", p.Name)
	}
	sum := Summary(t, e.Must("backup", "--json", src).Stdout)
	if locks := repoFiles(t, e, "locks"); len(locks) != 0 {
		t.Errorf("locks left after a successful backup: %v", locks)
	}
	id := sum["snapshot_id"].(string)
	for _, sn := range append(before, map[string]any{"id": id}) {
		target := filepath.Join(e.Dir, "restore-"+sn["id"].(string)[:8])
		e.Must("restore", sn["id"].(string), "--target", target)
		sameTree(t, src, restoredAt(target, src))
		if err := os.RemoveAll(target); err != nil {
			t.Fatal(err)
		}
	}
	e.Must("backup", src) // and once more, incrementally
	return sum
}

// crashEnv is a fresh repository whose temporary files stay in the test's
// directory.
func crashEnv(t *testing.T) *Env {
	t.Helper()
	e := NewRepo(t)
	tmp := filepath.Join(e.Dir, "tmp")
	if err := os.Mkdir(tmp, 0o700); err != nil {
		t.Fatal(err)
	}
	e.Extra = append(e.Extra, "TMPDIR="+tmp)
	return e
}

func TestBackupKilled(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src")
	size := crashSource(t, src)
	points := []killPoint{
		{"after the first pack", func(p, _ int) bool { return p >= 1 }},
		{"half way", func(p, _ int) bool { return p >= 9 }},
		{"when the index is written", func(_, i int) bool { return i >= 1 }},
	}
	killed := 0
	for _, at := range points {
		t.Run(strings.ReplaceAll(at.name, " ", "_"), func(t *testing.T) {
			e := crashEnv(t)
			code, stderr, sent := startBackup(t, e, src, at, syscall.SIGKILL)
			indexed := len(repoFiles(t, e, "index")) > 0
			switch {
			case sent && code == -int(syscall.SIGKILL):
				killed++
				t.Logf("killed %s: %d packs, %d index files, %d snapshots", at.name,
					len(repoFiles(t, e, "data")), len(repoFiles(t, e, "index")),
					len(repoFiles(t, e, "snapshots")))
			case code == 0:
				t.Logf("the backup ended before it could be killed %s", at.name)
			default:
				t.Fatalf("backup: exit %d\n%s", code, stderr)
			}
			sum := recoverAndCheck(t, e, src)
			// Packs named by an index file are reused, not stored again.
			if n := intField(t, sum, "data_added"); indexed && n > size/20 {
				t.Errorf("the backup after the kill added %d bytes of %d already indexed", n, size)
			}
		})
	}
	if killed == 0 {
		t.Errorf("no backup was still running when its kill point came")
	}
}

func TestBackupInterrupted(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src")
	crashSource(t, src)
	first := killPoint{"after the first pack", func(p, _ int) bool { return p >= 1 }}
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			e := crashEnv(t)
			code, stderr, sent := startBackup(t, e, src, first, sig)
			if !sent {
				t.Fatalf("the backup ended before the signal (exit %d)", code)
			}
			if code != 130 {
				t.Fatalf("backup stopped by %s: exit %d, want 130\n%s", sig, code, stderr)
			}
			r := Result{Stderr: stderr, Code: code}
			wantErrLine(t, r, "interrupted")
			if n := len(e.Snapshots()); n != 0 {
				t.Errorf("an interrupted backup saved %d snapshots", n)
			}
			if locks := repoFiles(t, e, "locks"); len(locks) != 0 {
				t.Errorf("an interrupted backup left its lock: %v", locks)
			}
			recoverAndCheck(t, e, src)
		})
	}
}

// plantLock writes a lock into e's repository as another process would.
func plantLock(t *testing.T, e *Env, l repo.Lock) {
	t.Helper()
	r := e.OpenRepo()
	if _, err := r.SaveJSON(context.Background(), repo.LockFile, &l); err != nil {
		t.Fatal(err)
	}
}

func TestRepositoryLocks(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	src := filepath.Join(e.Dir, "src")
	WriteFile(t, filepath.Join(src, "f"), []byte("f"))
	e.Must("backup", src)
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	// A live process on this host to hold locks.
	holder := exec.Command("sleep", "600")
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = holder.Process.Kill(); _ = holder.Wait() })
	pid := holder.Process.Pid
	target := filepath.Join(e.Dir, "target")

	// A shared lock of a live process does not stop a backup or a restore.
	plantLock(t, e, repo.Lock{Time: time.Now(), Hostname: host, Username: "root", PID: pid})
	e.Must("backup", src)
	e.Must("restore", "latest", "--target", target)
	if n := len(repoFiles(t, e, "locks")); n != 1 {
		t.Errorf("%d locks, want the live shared one", n)
	}

	// An exclusive one does; listing snapshots takes no lock.
	plantLock(t, e, repo.Lock{Time: time.Now(), Exclusive: true, Hostname: host, Username: "root", PID: pid})
	r := e.Fails(11, "backup", src)
	wantErrLine(t, r, "locked", fmt.Sprint(pid))
	e.Fails(11, "restore", "latest", "--target", target)
	e.Must("snapshots")
	if n := len(e.Snapshots()); n != 2 {
		t.Errorf("%d snapshots, want 2: a locked-out backup saved one", n)
	}

	// Once the holder is gone its locks are stale and removed without asking.
	_ = holder.Process.Kill()
	_ = holder.Wait()
	e.Must("backup", src)
	if locks := repoFiles(t, e, "locks"); len(locks) != 0 {
		t.Errorf("stale locks of a dead process were left: %v", locks)
	}

	// Another host's lock: live until not refreshed for 30 minutes.
	plantLock(t, e, repo.Lock{Time: time.Now().Add(-10 * time.Minute), Exclusive: true, Hostname: "elsewhere", PID: 1})
	wantErrLine(t, e.Fails(11, "backup", src), "locked", "elsewhere")
	for _, h := range repoFiles(t, e, "locks") {
		removeRepoFile(t, e, h)
	}
	plantLock(t, e, repo.Lock{Time: time.Now().Add(-31 * time.Minute), Exclusive: true, Hostname: "elsewhere", PID: 1})
	e.Must("backup", src)
	if locks := repoFiles(t, e, "locks"); len(locks) != 0 {
		t.Errorf("a lock not refreshed for 31 minutes was left: %v", locks)
	}
}

package tests

import (
	"bytes"
	"context"
	"errors"
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

// The tests in this file run several cairn processes on one repository at
// once, as cron jobs on several machines do: backups share the repository
// (shared locks), while prune and forget need it to themselves (exclusive
// locks; docs/cli.md, exit code 11) and must never remove data a running
// backup relies on.

// concProc is a cairn process running in the background.
type concProc struct {
	cmd  *exec.Cmd
	args []string
	out  bytes.Buffer
	errb bytes.Buffer
	done chan struct{} // closed when res is set
	res  Result
}

// concStart starts cairn with args on e's repository.
func concStart(t *testing.T, e *Env, args ...string) *concProc {
	t.Helper()
	p := &concProc{cmd: e.Cmd(args...), args: args, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.errb
	// A child left behind by a killed cairn (a --stdin-from-command
	// command) must not keep Wait on the output pipes.
	p.cmd.WaitDelay = 10 * time.Second
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start cairn %v: %v", args, err)
	}
	go func() {
		err := p.cmd.Wait()
		p.res = Result{Args: args, Stdout: p.out.String(), Stderr: p.errb.String()}
		var ee *exec.ExitError
		switch {
		case err == nil:
		case errors.As(err, &ee):
			p.res.Code = ee.ExitCode()
		default:
			p.res.Code = -1
			p.res.Stderr += "\n" + err.Error()
		}
		close(p.done)
	}()
	// A test that stops early must not leave the process behind.
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// running reports whether the process has not exited yet.
func (p *concProc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// wait waits for the process and returns what it left behind.
func (p *concProc) wait(t *testing.T) Result {
	t.Helper()
	<-p.done
	if strings.Contains(p.res.Stderr, "panic:") || strings.Contains(p.res.Stderr, "goroutine ") {
		t.Fatalf("cairn panicked:\n%s", p.res)
	}
	return p.res
}

// concTree writes a source tree of about 40 MiB of incompressible files:
// a dozen of its own, drawn from seed, and one all trees share, so that
// backups running at once store the same blobs.
func concTree(t *testing.T, root string, seed uint64) {
	t.Helper()
	for i := range 12 {
		dir := filepath.Join(root, fmt.Sprintf("d%d", i%3))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		// 1.5 to 4 MiB: files span chunk and pack boundaries.
		n := int64(3<<19) + int64(i%6)<<19
		writeRandomFile(t, filepath.Join(dir, fmt.Sprintf("f%02d", i)), seed*100+uint64(i), n)
	}
	writeRandomFile(t, filepath.Join(root, "shared.bin"), 60000, 6<<20)
	WriteFile(t, filepath.Join(root, "small", "note.txt"), []byte(fmt.Sprintf("tree %d\n", seed)))
}

func TestConcurrentBackups(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	srcs := make([]string, 3)
	for i := range srcs {
		srcs[i] = filepath.Join(e.Dir, fmt.Sprintf("src%d", i))
		concTree(t, srcs[i], uint64(i+1))
	}

	// All three start at once and share the cache directory, as jobs of one
	// user on one machine do.
	var procs []*concProc
	for _, src := range srcs {
		procs = append(procs, concStart(t, e, "backup", "--json", src))
	}
	// Watch the locks while they run: the test means something only if the
	// backups held the repository at the same time.
	most := 0
	for slices.ContainsFunc(procs, (*concProc).running) {
		most = max(most, len(repoFiles(t, e, repo.LockFile)))
		time.Sleep(10 * time.Millisecond)
	}
	ids := make([]string, len(procs))
	for i, p := range procs {
		r := p.wait(t)
		if r.Code != 0 {
			t.Fatalf("backup %d of 3 run at once:\n%s", i+1, r)
		}
		ids[i] = Summary(t, r.Stdout)["snapshot_id"].(string)
	}
	t.Logf("at most %d backups held a lock at once", most)
	if most < 2 {
		t.Errorf("the backups never held the repository at the same time (at most %d lock seen)", most)
	}
	if locks := repoFiles(t, e, repo.LockFile); len(locks) != 0 {
		t.Errorf("locks left after the backups ended: %v", locks)
	}

	got := snapIDs(e.Snapshots())
	slices.Sort(got)
	want := slices.Clone(ids)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("snapshots %v, want the three backups' %v", got, want)
	}
	restoreEach := func(when string) {
		t.Helper()
		for i, id := range ids {
			target := filepath.Join(e.Dir, fmt.Sprintf("restore-%s-%d", when, i))
			e.Must("restore", id, "--target", target)
			sameTree(t, srcs[i], restoredAt(target, srcs[i]))
			if err := os.RemoveAll(target); err != nil {
				t.Fatal(err)
			}
		}
	}
	restoreEach("after-backup")
	e.Must("check", "--read-data")

	// Backups racing for the shared file may each have stored it; a prune
	// sorting out the copies must keep one of each blob.
	e.Must("prune")
	e.Must("check", "--read-data")
	restoreEach("after-prune")
}

// concSlowCommand returns the arguments of a command for backup
// --stdin-from-command that prints the files before, then waits until the
// file gate exists, then prints after: the backup stays running, holding
// its lock, for as long as the test wants.
func concSlowCommand(before []string, gate, after string) []string {
	// The wait is bounded so that a test that dies early leaves nothing
	// running for long.
	script := `gate=$1 after=$2; shift 2
cat "$@" || exit 1
w=0
while [ ! -e "$gate" ]; do
	w=$((w+1)); [ $w -le 6000 ] || exit 1
	sleep 0.05
done
exec cat "$after"`
	return append([]string{"sh", "-c", script, "sh", gate, after}, before...)
}

// concLockPIDs returns the PIDs of the locks in r; a lock released while it
// is read is left out.
func concLockPIDs(t *testing.T, r *repo.Repo) []int {
	t.Helper()
	ctx := context.Background()
	var ids []repo.ID
	if err := r.ListIDs(ctx, repo.LockFile, func(id repo.ID, _ int64) error {
		ids = append(ids, id)
		return nil
	}); err != nil {
		t.Fatalf("list locks: %v", err)
	}
	var pids []int
	for _, id := range ids {
		var l repo.Lock
		err := r.LoadJSON(ctx, repo.LockFile, id, &l)
		if errors.Is(err, repo.ErrNotFound) {
			continue
		}
		if err != nil {
			t.Fatalf("read lock %s: %v", id.Short(), err)
		}
		pids = append(pids, l.PID)
	}
	return pids
}

func TestConcurrentPruneDuringBackup(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	data := filepath.Join(e.Dir, "data")

	// Snapshot "old" holds data the coming backup will find already stored;
	// it is forgotten, so that a prune left to run would remove that data.
	oldFile := filepath.Join(data, "old", "old.bin")
	if err := os.MkdirAll(filepath.Dir(oldFile), 0o755); err != nil {
		t.Fatal(err)
	}
	writeRandomFile(t, oldFile, 7001, 8<<20)
	oldID := backupID(t, e, filepath.Dir(oldFile))
	// Two versions of another tree give forget --keep-last 1 work to do.
	keep := filepath.Join(data, "keep")
	WriteFile(t, filepath.Join(keep, "v"), []byte("version 1\n"))
	kept := []string{backupID(t, e, keep)}
	WriteFile(t, filepath.Join(keep, "v"), []byte("version 2, longer\n"))
	kept = append(kept, backupID(t, e, keep))
	e.Must("forget", oldID)

	// The stream: the old data, 40 MiB of new data (more than two packs,
	// which the backup stores while it waits), then, once the gate opens,
	// a last part.
	newFile := filepath.Join(e.Dir, "new.bin")
	writeRandomFile(t, newFile, 7002, 40<<20)
	lastFile := filepath.Join(e.Dir, "last.bin")
	writeRandomFile(t, lastFile, 7003, 3<<20)
	gate := filepath.Join(e.Dir, "gate")
	open := func() {
		if err := os.WriteFile(gate, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	packsBefore := repoFiles(t, e, repo.PackFile)
	args := append([]string{"backup", "--json", "--stdin-from-command", "--stdin-filename", "stream.bin", "--"},
		concSlowCommand([]string{oldFile, newFile}, gate, lastFile)...)
	backup := concStart(t, e, args...)
	// Run before concStart's cleanup: a test that stops early lets the
	// command end.
	t.Cleanup(func() { _ = os.WriteFile(gate, nil, 0o644) })
	pid := backup.cmd.Process.Pid

	// Wait until the backup holds its lock and has stored packs that no
	// index names yet: what a prune would take for garbage.
	r := e.OpenRepo()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		if !backup.running() {
			t.Fatalf("the backup ended before its command could finish:\n%s", backup.wait(t))
		}
		if slices.Contains(concLockPIDs(t, r), pid) && len(repoFiles(t, e, repo.PackFile)) > len(packsBefore) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 3 minutes the backup (PID %d) holds no lock or stored no pack; locks of PIDs %v",
				pid, concLockPIDs(t, r))
		}
		time.Sleep(20 * time.Millisecond)
	}
	packsDuring := repoFiles(t, e, repo.PackFile)

	// Prune and forget need the repository to themselves: they refuse
	// (exit 11, naming the backup's lock) or wait for it; a waiting one
	// must not finish while the backup runs.
	var waiting []*concProc
	for _, cmd := range [][]string{{"prune"}, {"forget", "--keep-last", "1"}} {
		p := concStart(t, e, cmd...)
		select {
		case <-p.done:
			res := p.wait(t)
			if res.Code != 11 {
				t.Fatalf("while a backup runs, want exit 11, got:\n%s", res)
			}
			wantErrLine(t, res, "locked", fmt.Sprint(pid))
		case <-time.After(20 * time.Second):
			t.Logf("cairn %s waits for the backup's lock", strings.Join(cmd, " "))
			waiting = append(waiting, p)
		}
		if !backup.running() {
			t.Fatalf("the backup ended while its command still waited:\n%s", backup.wait(t))
		}
	}
	// Nothing was removed while the backup ran.
	if got := snapIDs(e.Snapshots()); len(got) != 2 || !slices.Contains(got, kept[0]) || !slices.Contains(got, kept[1]) {
		t.Errorf("snapshots while the backup runs: %v, want %v", got, kept)
	}
	packsNow := repoFiles(t, e, repo.PackFile)
	for _, h := range packsDuring {
		if !slices.Contains(packsNow, h) {
			t.Errorf("pack %s was removed while the backup ran", h.Name)
		}
	}

	open()
	res := backup.wait(t)
	if res.Code != 0 {
		t.Fatalf("the backup prune and forget ran against:\n%s", res)
	}
	id := Summary(t, res.Stdout)["snapshot_id"].(string)
	for _, p := range waiting {
		if res := p.wait(t); res.Code != 0 {
			t.Errorf("once the backup ended:\n%s", res)
		}
	}

	want := filepath.Join(e.Dir, "want.bin")
	var stream []byte
	for _, f := range []string{oldFile, newFile, lastFile} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		stream = append(stream, b...)
	}
	WriteFile(t, want, stream)
	restoreStream := func(when string) {
		t.Helper()
		target := filepath.Join(e.Dir, "restore-"+when)
		e.Must("restore", id, "--target", target)
		if got, want := fileHash(t, filepath.Join(target, "stream.bin")), fileHash(t, want); got != want {
			t.Errorf("%s: the restored stream differs from what the command printed", when)
		}
		if err := os.RemoveAll(target); err != nil {
			t.Fatal(err)
		}
	}
	e.Must("check", "--read-data")
	restoreStream("after-backup")

	// Now prune and forget run, and the data the backup found already
	// stored (the forgotten snapshot's) stays for it.
	e.Must("forget", "--keep-last", "1")
	e.Must("prune")
	if got := snapIDs(e.Snapshots()); len(got) != 2 || !slices.Contains(got, id) || !slices.Contains(got, kept[1]) {
		t.Errorf("snapshots after forget --keep-last 1: %v, want %s and %s", got, id, kept[1])
	}
	e.Must("check", "--read-data")
	restoreStream("after-prune")
	if locks := repoFiles(t, e, repo.LockFile); len(locks) != 0 {
		t.Errorf("locks left: %v", locks)
	}
}

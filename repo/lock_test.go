package repo

// Internal tests: the refresh interval is shortened, and the package's own
// backends (repo/mem) can not be imported from here, so a small one with
// hooks is below.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cairn-backup/cairn/crypto"
)

// hookBackend keeps files in memory; beforeSave may fail or delay a save,
// afterRemove observes removals.
type hookBackend struct {
	mu          sync.Mutex
	files       map[Handle][]byte
	beforeSave  func(h Handle) error
	afterRemove func(h Handle)
}

func newHookBackend() *hookBackend { return &hookBackend{files: map[Handle][]byte{}} }

func (b *hookBackend) Save(ctx context.Context, h Handle, r io.ReaderAt, size int64) error {
	b.mu.Lock()
	hook := b.beforeSave
	b.mu.Unlock()
	if hook != nil {
		if err := hook(h); err != nil {
			return err
		}
	}
	data := make([]byte, size)
	if _, err := r.ReadAt(data, 0); err != nil && size > 0 {
		return err
	}
	b.mu.Lock()
	b.files[h] = data
	b.mu.Unlock()
	return nil
}

func (b *hookBackend) Load(ctx context.Context, h Handle, offset, length int64, fn func(io.Reader) error) error {
	b.mu.Lock()
	data, ok := b.files[h]
	b.mu.Unlock()
	if !ok {
		return fmt.Errorf("%s: %w", h, ErrNotFound)
	}
	data = data[offset:]
	if length > 0 {
		data = data[:length]
	}
	return fn(bytes.NewReader(data))
}

func (b *hookBackend) Stat(ctx context.Context, h Handle) (FileInfo, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	data, ok := b.files[h]
	if !ok {
		return FileInfo{}, fmt.Errorf("%s: %w", h, ErrNotFound)
	}
	return FileInfo{Name: h.Name, Size: int64(len(data))}, nil
}

func (b *hookBackend) List(ctx context.Context, t FileType, fn func(FileInfo) error) error {
	b.mu.Lock()
	var infos []FileInfo
	for h, d := range b.files {
		if h.Type == t {
			infos = append(infos, FileInfo{Name: h.Name, Size: int64(len(d))})
		}
	}
	b.mu.Unlock()
	for _, fi := range infos {
		if err := fn(fi); err != nil {
			return err
		}
	}
	return nil
}

func (b *hookBackend) Remove(ctx context.Context, h Handle) error {
	b.mu.Lock()
	delete(b.files, h)
	hook := b.afterRemove
	b.mu.Unlock()
	if hook != nil {
		hook(h)
	}
	return nil
}

func (b *hookBackend) Location() string { return "hook:" }
func (b *hookBackend) Close() error     { return nil }

func (b *hookBackend) setHooks(beforeSave func(Handle) error, afterRemove func(Handle)) {
	b.mu.Lock()
	b.beforeSave, b.afterRemove = beforeSave, afterRemove
	b.mu.Unlock()
}

func newLockRepo(t *testing.T) (*Repo, *hookBackend) {
	t.Helper()
	be := newHookBackend()
	r, err := Init(context.Background(), be, []byte("pw"), InitOptions{KDF: crypto.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}})
	if err != nil {
		t.Fatal(err)
	}
	return r, be
}

// second opens the same repository again, as another process would.
func second(t *testing.T, be Backend) *Repo {
	t.Helper()
	r, err := Open(context.Background(), be, []byte("pw"))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func lockIDs(t *testing.T, r *Repo) []ID {
	t.Helper()
	var ids []ID
	if err := r.ListIDs(context.Background(), LockFile, func(id ID, _ int64) error {
		ids = append(ids, id)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return ids
}

func setRefresh(t *testing.T, d time.Duration) {
	old := lockRefresh
	lockRefresh = d
	t.Cleanup(func() { lockRefresh = old })
}

// deadPID returns the PID of a process that has exited.
func deadPID(t *testing.T) int {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	if err := cmd.Run(); err != nil {
		t.Fatalf("run a short-lived process: %v", err)
	}
	return cmd.Process.Pid
}

func TestSharedLocksCoexist(t *testing.T) {
	ctx := context.Background()
	r1, be := newLockRepo(t)
	r2 := second(t, be)
	inner := false
	err := r1.WithLock(ctx, false, func(ctx context.Context) error {
		return r2.WithLock(ctx, false, func(context.Context) error {
			inner = true
			if n := len(lockIDs(t, r1)); n != 2 {
				t.Errorf("%d lock files while two shared locks are held, want 2", n)
			}
			return nil
		})
	})
	if err != nil || !inner {
		t.Fatalf("two shared locks: %v (inner ran: %v)", err, inner)
	}
	if ids := lockIDs(t, r1); len(ids) != 0 {
		t.Fatalf("%d lock files left after release", len(ids))
	}
}

func TestLockConflicts(t *testing.T) {
	host, _ := os.Hostname()
	cases := []struct {
		name              string
		held, want        bool // exclusive?
		conflict, holderX bool
	}{
		{"shared then exclusive", false, true, true, false},
		{"exclusive then shared", true, false, true, true},
		{"exclusive then exclusive", true, true, true, true},
		{"shared then shared", false, false, false, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			r1, be := newLockRepo(t)
			r2 := second(t, be)
			err := r1.WithLock(ctx, tc.held, func(ctx context.Context) error {
				ran := false
				err := r2.WithLock(ctx, tc.want, func(context.Context) error { ran = true; return nil })
				if !tc.conflict {
					if err != nil || !ran {
						t.Errorf("no conflict expected: %v (ran: %v)", err, ran)
					}
					return nil
				}
				if ran {
					t.Error("fn ran despite a conflicting lock")
				}
				var le *LockedError
				if !errors.As(err, &le) {
					t.Fatalf("got %v, want a *LockedError", err)
				}
				if le.Holder.PID != os.Getpid() || le.Holder.Hostname != host || le.Holder.Exclusive != tc.holderX {
					t.Errorf("holder %+v, want PID %d on %s (exclusive %v)", le.Holder, os.Getpid(), host, tc.holderX)
				}
				msg := err.Error()
				if !strings.Contains(msg, strconv.Itoa(os.Getpid())) || !strings.Contains(msg, host) {
					t.Errorf("message does not name the holder: %s", msg)
				}
				// The refused attempt leaves no lock of its own behind.
				if n := len(lockIDs(t, r1)); n != 1 {
					t.Errorf("%d lock files after a refused lock, want 1", n)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if n := len(lockIDs(t, r1)); n != 0 {
				t.Fatalf("%d lock files left", n)
			}
		})
	}
}

func TestStaleLocks(t *testing.T) {
	ctx := context.Background()
	host, _ := os.Hostname()
	now := time.Now()
	cases := []struct {
		name  string
		lock  Lock
		stale bool
	}{
		{"old, other host", Lock{Time: now.Add(-LockStaleAfter - time.Minute), Hostname: "elsewhere", PID: 1}, true},
		{"old exclusive, this host, live process", Lock{Time: now.Add(-2 * LockStaleAfter), Exclusive: true, Hostname: host, PID: os.Getpid()}, true},
		{"fresh, this host, process gone", Lock{Time: now, Exclusive: true, Hostname: host, PID: deadPID(t)}, true},
		{"fresh, other host, process number unknown here", Lock{Time: now, Exclusive: true, Hostname: "elsewhere", PID: deadPID(t)}, false},
		{"fresh, this host, live process", Lock{Time: now.Add(-LockStaleAfter + time.Minute), Hostname: host, PID: os.Getpid()}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.lock.Stale(time.Now()); got != tc.stale {
				t.Fatalf("Stale() = %v, want %v", got, tc.stale)
			}
			r, _ := newLockRepo(t)
			id, err := r.SaveJSON(ctx, LockFile, &tc.lock)
			if err != nil {
				t.Fatal(err)
			}
			ran := false
			err = r.WithLock(ctx, true, func(context.Context) error { ran = true; return nil })
			if tc.stale {
				if err != nil || !ran {
					t.Fatalf("a stale lock blocked: %v", err)
				}
				if ids := lockIDs(t, r); len(ids) != 0 {
					t.Fatalf("stale lock not removed: %v", ids)
				}
				return
			}
			var le *LockedError
			if !errors.As(err, &le) || ran {
				t.Fatalf("a live lock did not block: %v (ran: %v)", err, ran)
			}
			if le.Holder.Hostname != tc.lock.Hostname || le.Holder.PID != tc.lock.PID {
				t.Errorf("holder %+v, want %+v", le.Holder, tc.lock)
			}
			if ids := lockIDs(t, r); len(ids) != 1 || ids[0] != id {
				t.Fatalf("live lock was touched: %v", ids)
			}
		})
	}
}

func TestRemoveLocks(t *testing.T) {
	ctx := context.Background()
	host, _ := os.Hostname()
	r, _ := newLockRepo(t)
	locks := []Lock{
		{Time: time.Now().Add(-time.Hour), Hostname: "elsewhere", PID: 10},
		{Time: time.Now(), Hostname: host, PID: deadPID(t)},
		{Time: time.Now(), Hostname: "elsewhere", PID: 10},
		{Time: time.Now(), Exclusive: true, Hostname: host, PID: os.Getpid()},
	}
	for i := range locks {
		if _, err := r.SaveJSON(ctx, LockFile, &locks[i]); err != nil {
			t.Fatal(err)
		}
	}
	n, err := r.RemoveLocks(ctx, false)
	if err != nil || n != 2 {
		t.Fatalf("RemoveLocks(stale): removed %d, %v; want 2", n, err)
	}
	if ids := lockIDs(t, r); len(ids) != 2 {
		t.Fatalf("%d locks left, want the 2 live ones", len(ids))
	}
	n, err = r.RemoveLocks(ctx, true)
	if err != nil || n != 2 {
		t.Fatalf("RemoveLocks(all): removed %d, %v; want 2", n, err)
	}
	if ids := lockIDs(t, r); len(ids) != 0 {
		t.Fatalf("%d locks left after removing all", len(ids))
	}
}

func TestLockRefresh(t *testing.T) {
	setRefresh(t, 5*time.Millisecond)
	ctx := context.Background()
	r, _ := newLockRepo(t)
	err := r.WithLock(ctx, true, func(ctx context.Context) error {
		first := lockIDs(t, r)
		if len(first) != 1 {
			return fmt.Errorf("%d lock files, want 1", len(first))
		}
		var orig Lock
		if err := r.LoadJSON(ctx, LockFile, first[0], &orig); err != nil {
			return err
		}
		// Wait for a refresh: a new file with a later time replaces the first.
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			ids := lockIDs(t, r)
			if len(ids) == 1 && ids[0] != first[0] {
				var l Lock
				if err := r.LoadJSON(ctx, LockFile, ids[0], &l); err != nil {
					if errors.Is(err, ErrNotFound) {
						continue // replaced meanwhile
					}
					return err
				}
				if !l.Time.After(orig.Time) || l.PID != orig.PID || !l.Exclusive {
					return fmt.Errorf("refreshed lock %+v, was %+v", l, orig)
				}
				return nil
			}
			time.Sleep(time.Millisecond)
		}
		return errors.New("lock was never refreshed")
	})
	if err != nil {
		t.Fatal(err)
	}
	if ids := lockIDs(t, r); len(ids) != 0 {
		t.Fatalf("%d lock files left after release", len(ids))
	}
}

func TestLockLost(t *testing.T) {
	setRefresh(t, 5*time.Millisecond)
	r, be := newLockRepo(t)
	saves := 0
	errBackend := errors.New("backend unreachable")
	be.setHooks(func(h Handle) error {
		if h.Type != LockFile {
			return nil
		}
		saves++ // only the locker and its refresher save, one after the other
		if saves > 1 {
			return errBackend
		}
		return nil
	}, nil)
	err := r.WithLock(context.Background(), false, func(ctx context.Context) error {
		select {
		case <-ctx.Done():
			if !errors.Is(context.Cause(ctx), ErrLockLost) {
				t.Errorf("cause %v, want ErrLockLost", context.Cause(ctx))
			}
			return ctx.Err()
		case <-time.After(30 * time.Second):
			return errors.New("context not cancelled when the lock could not be refreshed")
		}
	})
	if !errors.Is(err, ErrLockLost) {
		t.Fatalf("WithLock: %v, want ErrLockLost", err)
	}
}

// TestReleaseDuringRefresh: a refresh still being written when the lock is
// released must not leave a lock file behind.
func TestReleaseDuringRefresh(t *testing.T) {
	setRefresh(t, time.Millisecond)
	r, be := newLockRepo(t)
	var (
		mu       sync.Mutex
		saves    int
		blocked  = make(chan struct{}) // a refresh save is waiting
		unblock  = make(chan struct{})
		finished = make(chan struct{}) // the blocked save returned
		removed  = make(chan Handle, 100)
		once     sync.Once
	)
	be.setHooks(func(h Handle) error {
		if h.Type != LockFile {
			return nil
		}
		mu.Lock()
		saves++
		n := saves
		mu.Unlock()
		if n == 2 { // the first refresh; the backend ignores cancellation, like a write in progress
			close(blocked)
			<-unblock
			defer close(finished)
		}
		return nil
	}, func(h Handle) {
		if h.Type == LockFile {
			removed <- h
			// The release removed the first lock: let the refresh finish now.
			once.Do(func() { close(unblock) })
		}
	})
	err := r.WithLock(context.Background(), false, func(context.Context) error {
		<-blocked
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	<-finished
	<-removed // by the release
	<-removed // by the refresher, once its save returned
	if ids := lockIDs(t, r); len(ids) != 0 {
		t.Fatalf("lock file %s left after release", ids[0].Short())
	}
}

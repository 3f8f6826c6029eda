package repo

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"
)

// LockStaleAfter is how long a lock lives without a refresh.
const LockStaleAfter = 30 * time.Minute

// lockRefresh is well within LockStaleAfter; a variable so tests can shorten it.
var lockRefresh = 5 * time.Minute

// Lock is the content of locks/<ID>.
type Lock struct {
	Time      time.Time `json:"time"`
	Exclusive bool      `json:"exclusive"`
	Hostname  string    `json:"hostname"`
	Username  string    `json:"username"`
	PID       int       `json:"pid"`
}

func (l *Lock) String() string {
	kind := "shared"
	if l.Exclusive {
		kind = "exclusive"
	}
	return fmt.Sprintf("%s lock held by PID %d on %s (user %s) since %s", kind, l.PID, l.Hostname, l.Username, l.Time.Local().Format(time.DateTime))
}

// Stale reports whether l no longer protects anything: not refreshed for
// LockStaleAfter, or its process is gone on this host.
func (l *Lock) Stale(now time.Time) bool {
	if now.Sub(l.Time) > LockStaleAfter {
		return true
	}
	// kill(0) and kill(-1) address groups of processes, not the holder.
	if host, _ := os.Hostname(); host == l.Hostname && l.PID > 0 {
		err := syscall.Kill(l.PID, 0)
		return errors.Is(err, syscall.ESRCH)
	}
	return false
}

// LockedError says which live lock is in the way.
type LockedError struct{ Holder *Lock }

func (e *LockedError) Error() string { return "repository is locked: " + e.Holder.String() }

// ErrLockLost means the lock could not be refreshed; the operation stopped.
var ErrLockLost = errors.New("repository lock could not be refreshed")

// WithLock runs fn holding a shared or exclusive lock. Stale locks in the way
// are removed. fn's context is cancelled if the lock cannot be refreshed, so
// it stops before it can harm anything.
func (r *Repo) WithLock(ctx context.Context, exclusive bool, fn func(context.Context) error) error {
	username, hostname := Whoami()
	lock := &Lock{Time: time.Now(), Exclusive: exclusive, Hostname: hostname, Username: username, PID: os.Getpid()}
	id, err := r.SaveJSON(ctx, LockFile, lock)
	if err != nil {
		return fmt.Errorf("create lock: %w", err)
	}
	var mu sync.Mutex
	current := id
	released := false
	release := func() {
		mu.Lock()
		defer mu.Unlock()
		released = true
		_ = r.RemoveFile(context.WithoutCancel(ctx), LockFile, current)
	}
	// Check after writing ours: of two racing lockers, at least one sees the other.
	if err := r.checkLocks(ctx, id, exclusive); err != nil {
		release()
		return err
	}
	fctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(lockRefresh)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				lock.Time = time.Now()
				nid, err := r.SaveJSON(fctx, LockFile, lock)
				if err != nil {
					cancel(fmt.Errorf("%w: %v", ErrLockLost, err))
					return
				}
				mu.Lock()
				if released {
					// Written while the lock was being released: it must not outlive it.
					mu.Unlock()
					_ = r.RemoveFile(context.WithoutCancel(ctx), LockFile, nid)
					return
				}
				old := current
				current = nid
				mu.Unlock()
				_ = r.RemoveFile(fctx, LockFile, old)
			}
		}
	}()
	err = fn(fctx)
	close(done)
	release()
	if cause := context.Cause(fctx); err != nil && errors.Is(cause, ErrLockLost) {
		return cause
	}
	return err
}

func (r *Repo) checkLocks(ctx context.Context, own ID, exclusive bool) error {
	now := time.Now()
	return r.ListIDs(ctx, LockFile, func(id ID, _ int64) error {
		if id == own {
			return nil
		}
		var l Lock
		if err := r.LoadJSON(ctx, LockFile, id, &l); err != nil {
			if errors.Is(err, ErrNotFound) {
				return nil // released meanwhile
			}
			return fmt.Errorf("read lock %s: %w", id.Short(), err)
		}
		if l.Stale(now) {
			_ = r.RemoveFile(ctx, LockFile, id)
			return nil
		}
		if exclusive || l.Exclusive {
			return &LockedError{Holder: &l}
		}
		return nil
	})
}

// RemoveLocks deletes stale locks, or every lock with all set (cairn unlock).
func (r *Repo) RemoveLocks(ctx context.Context, all bool) (int, error) {
	n := 0
	now := time.Now()
	err := r.ListIDs(ctx, LockFile, func(id ID, _ int64) error {
		var l Lock
		err := r.LoadJSON(ctx, LockFile, id, &l)
		if errors.Is(err, ErrNotFound) {
			return nil // released meanwhile
		}
		if err != nil && !all {
			return err
		}
		if all || l.Stale(now) {
			if err := r.RemoveFile(ctx, LockFile, id); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	return n, err
}

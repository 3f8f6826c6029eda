package retry_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/repo/mem"
	"github.com/cairn-backup/cairn/repo/repotest"
	"github.com/cairn-backup/cairn/repo/retry"
)

// fast keeps the tests quick while leaving the bound far away.
var fast = retry.Options{MaxElapsed: time.Minute, InitialDelay: time.Millisecond, MaxDelay: 5 * time.Millisecond}

// errReset is what a dropped connection looks like.
var errReset = &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}

type fault int

const (
	noFault    fault = iota
	failBefore       // fail without touching the store
	failAfter        // do the operation, then lose the answer
	failMidway       // cut a Load stream or a List halfway
)

// faulty is an in-memory backend that injects the faults decide picks.
type faulty struct {
	mem    *mem.Backend
	decide func(op string, call int) fault
	err    error // the injected error; errReset when nil

	mu    sync.Mutex
	calls map[string]int
}

func newFaulty(decide func(op string, call int) fault) *faulty {
	return &faulty{mem: mem.New(), decide: decide, calls: map[string]int{}}
}

func (f *faulty) next(op string) fault {
	f.mu.Lock()
	f.calls[op]++
	n := f.calls[op]
	f.mu.Unlock()
	if f.decide == nil {
		return noFault
	}
	return f.decide(op, n)
}

func (f *faulty) count(op string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[op]
}

func (f *faulty) injected() error {
	if f.err != nil {
		return f.err
	}
	return errReset
}

func (f *faulty) Location() string { return "faulty:" }
func (f *faulty) Close() error     { return nil }

func (f *faulty) Save(ctx context.Context, h repo.Handle, r io.ReaderAt, size int64) error {
	switch f.next("save") {
	case failBefore:
		return f.injected()
	case failAfter, failMidway:
		if err := f.mem.Save(ctx, h, r, size); err != nil {
			return err
		}
		return f.injected()
	}
	return f.mem.Save(ctx, h, r, size)
}

func (f *faulty) Load(ctx context.Context, h repo.Handle, offset, length int64, fn func(io.Reader) error) error {
	switch f.next("load") {
	case failBefore:
		return f.injected()
	case failAfter, failMidway:
		return f.mem.Load(ctx, h, offset, length, func(r io.Reader) error {
			data, err := io.ReadAll(r)
			if err != nil {
				return err
			}
			// The stream breaks after half the data, as a cut connection does.
			return fn(io.MultiReader(bytes.NewReader(data[:len(data)/2]), errReader{f.injected()}))
		})
	}
	return f.mem.Load(ctx, h, offset, length, fn)
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

func (f *faulty) Stat(ctx context.Context, h repo.Handle) (repo.FileInfo, error) {
	if f.next("stat") == failBefore {
		return repo.FileInfo{}, f.injected()
	}
	return f.mem.Stat(ctx, h)
}

func (f *faulty) List(ctx context.Context, t repo.FileType, fn func(repo.FileInfo) error) error {
	switch f.next("list") {
	case failBefore:
		return f.injected()
	case failAfter, failMidway:
		var all []repo.FileInfo
		if err := f.mem.List(ctx, t, func(fi repo.FileInfo) error { all = append(all, fi); return nil }); err != nil {
			return err
		}
		for _, fi := range all[:len(all)/2] {
			if err := fn(fi); err != nil {
				return err
			}
		}
		return f.injected()
	}
	return f.mem.List(ctx, t, fn)
}

func (f *faulty) Remove(ctx context.Context, h repo.Handle) error {
	switch f.next("remove") {
	case failBefore:
		return f.injected()
	case failAfter, failMidway:
		if err := f.mem.Remove(ctx, h); err != nil {
			return err
		}
		return f.injected()
	}
	return f.mem.Remove(ctx, h)
}

// The wrapper keeps the Backend contract, without faults and with many.
func TestConformance(t *testing.T) {
	repotest.Run(t, func(t *testing.T) repo.Backend {
		return retry.New(mem.New(), fast)
	})
}

func TestConformanceWithFaults(t *testing.T) {
	repotest.Run(t, func(t *testing.T) repo.Backend {
		var mu sync.Mutex
		rnd := rand.New(rand.NewSource(1))
		return retry.New(newFaulty(func(string, int) fault {
			mu.Lock()
			defer mu.Unlock()
			if rnd.Intn(4) == 0 { // one call in four fails
				return fault(1 + rnd.Intn(3))
			}
			return noFault
		}), fast)
	})
}

// failFirst makes the first n calls of every operation fail with f.
func failFirst(n int, f fault) func(string, int) fault {
	return func(_ string, call int) fault {
		if call <= n {
			return f
		}
		return noFault
	}
}

func TestTransientErrorsAreRetried(t *testing.T) {
	for _, f := range []fault{failBefore, failAfter, failMidway} {
		t.Run(fmt.Sprint(f), func(t *testing.T) {
			ctx := context.Background()
			fb := newFaulty(nil)
			be := retry.New(fb, fast)
			data := bytes.Repeat([]byte("cairn"), 1000)
			h := repo.Handle{Type: repo.PackFile, Name: "aa01"}
			// Faults start once the file exists, so every operation meets them.
			if err := fb.mem.Save(ctx, h, bytes.NewReader(data), int64(len(data))); err != nil {
				t.Fatal(err)
			}
			fb.decide = failFirst(3, f)

			if err := be.Save(ctx, h, bytes.NewReader(data), int64(len(data))); err != nil {
				t.Errorf("save: %v", err)
			}
			got, err := repo.ReadAll(ctx, be, h)
			if err != nil || !bytes.Equal(got, data) {
				t.Errorf("load: %d bytes, %v; want the %d bytes saved", len(got), err, len(data))
			}
			if fi, err := be.Stat(ctx, h); err != nil || fi.Size != int64(len(data)) {
				t.Errorf("stat: %+v, %v", fi, err)
			}
			n := 0
			if err := be.List(ctx, repo.PackFile, func(repo.FileInfo) error { n++; return nil }); err != nil || n != 1 {
				t.Errorf("list: %d files, %v; want 1", n, err)
			}
			if err := be.Remove(ctx, h); err != nil {
				t.Errorf("remove: %v", err)
			}
			if _, err := fb.mem.Stat(ctx, h); !errors.Is(err, repo.ErrNotFound) {
				t.Errorf("file still there after remove: %v", err)
			}
			for _, op := range []string{"save", "load", "list", "remove"} {
				if got := fb.count(op); got != 4 {
					t.Errorf("%s: %d calls, want 4 (3 failures, then success)", op, got)
				}
			}
		})
	}
}

func TestPermanentErrorsFailAtOnce(t *testing.T) {
	for _, perm := range []error{
		fmt.Errorf("data/aa01: %w", repo.ErrNotFound),
		retry.Permanent(errReset),
		errors.New("no space left on device"),
		context.Canceled,
		&net.OpError{Op: "remote error", Net: "tcp", Err: errors.New("tls: handshake failure")},
	} {
		t.Run(perm.Error(), func(t *testing.T) {
			fb := newFaulty(failFirst(100, failBefore))
			fb.err = perm
			be := retry.New(fb, fast)
			_, err := be.Stat(context.Background(), repo.Handle{Type: repo.IndexFile, Name: "x"})
			if !errors.Is(err, perm) {
				t.Errorf("stat: %v, want %v", err, perm)
			}
			if n := fb.count("stat"); n != 1 {
				t.Errorf("%d calls, want 1", n)
			}
		})
	}
}

func TestGivesUpAfterMaxElapsed(t *testing.T) {
	refused := &url.Error{Op: "Put", URL: "http://127.0.0.1:1/b/x",
		Err: &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}}
	fb := newFaulty(failFirst(1<<30, failBefore))
	fb.err = refused
	opts := retry.Options{MaxElapsed: 50 * time.Millisecond, InitialDelay: time.Millisecond, MaxDelay: 10 * time.Millisecond}
	be := retry.New(fb, opts)
	data := []byte("x")
	err := be.Save(context.Background(), repo.Handle{Type: repo.SnapshotFile, Name: "s"}, bytes.NewReader(data), 1)
	if !errors.Is(err, syscall.ECONNREFUSED) || !strings.Contains(err.Error(), "giving up") {
		t.Fatalf("save against a server that never answers: %v, want a giving-up error naming the refusal", err)
	}
	if n := fb.count("save"); n < 2 {
		t.Errorf("%d calls, want retries before giving up", n)
	}
}

func TestCancelStopsRetries(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fb := newFaulty(func(_ string, call int) fault {
		if call == 3 {
			cancel()
		}
		return failBefore
	})
	be := retry.New(fb, retry.Options{InitialDelay: time.Millisecond, MaxDelay: time.Millisecond})
	err := be.Remove(ctx, repo.Handle{Type: repo.LockFile, Name: "l"})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("remove: %v, want context.Canceled", err)
	}
	if !strings.Contains(err.Error(), "connection reset") {
		t.Errorf("error %q does not name the failure that was being retried", err)
	}
	if n := fb.count("remove"); n != 3 {
		t.Errorf("%d calls, want 3 (no attempt after the cancel)", n)
	}

	// A cancellation cause is kept alongside context.Canceled.
	errLost := errors.New("lock lost")
	ctx3, cancel3 := context.WithCancelCause(context.Background())
	fb3 := newFaulty(func(_ string, call int) fault {
		if call == 2 {
			cancel3(errLost)
		}
		return failBefore
	})
	_, err = retry.New(fb3, fast).Stat(ctx3, repo.Handle{Type: repo.LockFile, Name: "l"})
	if !errors.Is(err, context.Canceled) || !errors.Is(err, errLost) {
		t.Errorf("stat cancelled with a cause: %v, want context.Canceled and the cause", err)
	}

	// Cancelled during a wait: Do returns without waiting it out.
	ctx2, cancel2 := context.WithCancel(context.Background())
	fb2 := newFaulty(failFirst(1<<30, failBefore))
	slow := retry.New(fb2, retry.Options{InitialDelay: time.Hour, MaxDelay: time.Hour})
	done := make(chan error, 1)
	go func() { done <- slow.Remove(ctx2, repo.Handle{Type: repo.LockFile, Name: "l"}) }()
	for fb2.count("remove") == 0 {
		time.Sleep(time.Millisecond)
	}
	cancel2()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("remove cancelled while waiting: %v, want context.Canceled", err)
	}
}

// A retried Load hands fn the data from the start, not the rest of a
// broken stream.
func TestLoadRestartsFromTheStart(t *testing.T) {
	ctx := context.Background()
	fb := newFaulty(nil)
	data := make([]byte, 10000)
	rand.New(rand.NewSource(1)).Read(data)
	h := repo.Handle{Type: repo.PackFile, Name: "p"}
	if err := fb.mem.Save(ctx, h, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	fb.decide = failFirst(2, failMidway)
	be := retry.New(fb, fast)
	got, err := repo.ReadAt(ctx, be, h, 100, 5000, nil)
	if err != nil || !bytes.Equal(got, data[100:5100]) {
		t.Fatalf("ReadAt through two cut streams: %v (content equal: %v)", err, bytes.Equal(got, data[100:5100]))
	}
	var calls int
	err = be.Load(ctx, h, 0, 0, func(r io.Reader) error {
		calls++
		_, err := io.Copy(io.Discard, r)
		return err
	})
	if err != nil || calls != 1 {
		t.Fatalf("load after the faults: %v, %d callback calls", err, calls)
	}
}

func TestListReportsEachNameOnce(t *testing.T) {
	ctx := context.Background()
	fb := newFaulty(nil)
	want := map[string]bool{}
	for i := range 100 {
		name := fmt.Sprintf("%064x", i)
		want[name] = true
		if err := fb.mem.Save(ctx, repo.Handle{Type: repo.IndexFile, Name: name}, bytes.NewReader(nil), 0); err != nil {
			t.Fatal(err)
		}
	}
	fb.decide = failFirst(3, failMidway)
	be := retry.New(fb, fast)
	seen := map[string]int{}
	if err := be.List(ctx, repo.IndexFile, func(fi repo.FileInfo) error { seen[fi.Name]++; return nil }); err != nil {
		t.Fatal(err)
	}
	for name, n := range seen {
		if n != 1 || !want[name] {
			t.Errorf("%s reported %d times (saved: %v)", name, n, want[name])
		}
	}
	if len(seen) != len(want) {
		t.Errorf("%d names reported, want %d", len(seen), len(want))
	}
}

func TestCallbackErrorsAreNotRetried(t *testing.T) {
	ctx := context.Background()
	fb := newFaulty(nil)
	h := repo.Handle{Type: repo.SnapshotFile, Name: "s"}
	if err := fb.mem.Save(ctx, h, bytes.NewReader([]byte("data")), 4); err != nil {
		t.Fatal(err)
	}
	be := retry.New(fb, fast)
	// Even an error that looks like a network one: it is the caller's.
	for _, cbErr := range []error{errors.New("decrypt failed"), errReset} {
		if err := be.List(ctx, repo.SnapshotFile, func(repo.FileInfo) error { return cbErr }); !errors.Is(err, cbErr) {
			t.Errorf("list: %v, want the callback's error", err)
		}
	}
	if n := fb.count("list"); n != 2 {
		t.Errorf("list: %d calls, want 2 (one per List)", n)
	}
	errDecrypt := errors.New("decrypt failed")
	if err := be.Load(ctx, h, 0, 0, func(io.Reader) error { return errDecrypt }); !errors.Is(err, errDecrypt) {
		t.Errorf("load: %v, want the callback's error", err)
	}
	if n := fb.count("load"); n != 1 {
		t.Errorf("load: %d calls, want 1", n)
	}
}

// brokenSource fails at once, as a file with a bad sector does.
type brokenSource struct{}

func (brokenSource) ReadAt(p []byte, off int64) (int, error) {
	return 0, errors.New("read /src/file: input/output error")
}

func TestSaveSourceFailuresAreNotRetried(t *testing.T) {
	ctx := context.Background()
	// The store reports a short source as io.ErrUnexpectedEOF, which a cut
	// connection gives too; the wrapper must still see whose failure it was.
	fb := newFaulty(nil)
	be := retry.New(fb, fast)
	h := repo.Handle{Type: repo.PackFile, Name: "p"}
	if err := be.Save(ctx, h, brokenSource{}, 100); err == nil {
		t.Error("save from a failing source succeeded")
	}
	if err := be.Save(ctx, h, bytes.NewReader(make([]byte, 60)), 100); err == nil {
		t.Error("save from a short source succeeded")
	}
	if n := fb.count("save"); n != 2 {
		t.Errorf("%d calls, want 2 (one per Save)", n)
	}
	if _, err := fb.mem.Stat(ctx, h); !errors.Is(err, repo.ErrNotFound) {
		t.Errorf("a failed save stored the file: %v", err)
	}
}

func TestNotify(t *testing.T) {
	var waits []time.Duration
	opts := fast
	opts.Notify = func(op string, err error, wait time.Duration) {
		if op != "stat index/i" || !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("notified %q, %v", op, err)
		}
		waits = append(waits, wait)
	}
	fb := newFaulty(failFirst(2, failBefore))
	if _, err := retry.New(fb, opts).Stat(context.Background(), repo.Handle{Type: repo.IndexFile, Name: "i"}); !errors.Is(err, repo.ErrNotFound) {
		t.Fatalf("stat: %v, want ErrNotFound after the retries", err)
	}
	if len(waits) != 2 {
		t.Fatalf("notified %d times, want 2", len(waits))
	}
	for _, w := range waits {
		if w <= 0 || w > opts.MaxDelay {
			t.Errorf("wait %s outside (0, %s]", w, opts.MaxDelay)
		}
	}
}

func TestIsTransient(t *testing.T) {
	cases := []struct {
		err  error
		want bool
	}{
		{nil, false},
		{errors.New("something else"), false},
		{fmt.Errorf("stat: %w", repo.ErrNotFound), false},
		{context.Canceled, false},
		{context.DeadlineExceeded, true},
		{io.ErrUnexpectedEOF, true},
		{&url.Error{Op: "Get", URL: "http://h/b", Err: &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}}, true},
		{fmt.Errorf("load: %w", errReset), true},
		{&url.Error{Op: "Put", URL: "http://h/b/k", Err: io.EOF}, true},
		// A server that went away while a request body was being sent.
		{&url.Error{Op: "Put", URL: "http://h/b/k", Err: &net.OpError{Op: "readfrom", Net: "tcp", Err: &net.OpError{Op: "write", Net: "tcp", Err: net.ErrClosed}}}, true},
		{fmt.Errorf("read source: %w", io.EOF), false},
		{&net.DNSError{Err: "no such host", Name: "nohost.invalid", IsNotFound: true}, false},
		{&net.DNSError{Err: "server misbehaving", Name: "h", IsTemporary: true}, true},
		{retry.Permanent(errReset), false},
		{retry.Transient(errors.New("503 SlowDown")), true},
		{retry.Transient(repo.ErrNotFound), true},
		{fmt.Errorf("outer: %w", retry.Permanent(retry.Transient(errReset))), false},
	}
	for _, c := range cases {
		if got := retry.IsTransient(c.err); got != c.want {
			t.Errorf("IsTransient(%v) = %v, want %v", c.err, got, c.want)
		}
	}
	if retry.Permanent(nil) != nil || retry.Transient(nil) != nil {
		t.Error("marking nil is not nil")
	}
}

// unordered lists names in the order given and breaks after breakAfter of
// them on its first call: a backend that ignores the ascending order.
type unordered struct {
	repo.Backend
	names      []string
	breakAfter int
	calls      int
}

func (u *unordered) List(ctx context.Context, t repo.FileType, fn func(repo.FileInfo) error) error {
	u.calls++
	for i, name := range u.names {
		if u.calls == 1 && i == u.breakAfter {
			return errReset
		}
		if err := fn(repo.FileInfo{Name: name}); err != nil {
			return err
		}
	}
	return nil
}

// A retried listing that meets names out of order fails instead of
// skipping them: a skipped index or pack would look absent.
func TestListOutOfOrderFails(t *testing.T) {
	u := &unordered{Backend: mem.New(), names: []string{"b", "c", "a", "d"}, breakAfter: 2}
	var got []string
	err := retry.New(u, fast).List(context.Background(), repo.IndexFile, func(fi repo.FileInfo) error {
		got = append(got, fi.Name)
		return nil
	})
	if err == nil {
		t.Fatalf("listing out of order after a retry succeeded with %v", got)
	}
	if !strings.Contains(err.Error(), "out of order") {
		t.Errorf("error %q does not say what went wrong", err)
	}
}

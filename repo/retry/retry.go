// Package retry lets a repository backend ride out transient failures: a
// server restarting, a dropped connection, throttling. New wraps any
// repo.Backend; Do retries one operation. Both wait with exponential backoff
// and jitter, give up after a bounded time, and stop at once on a permanent
// error or when the context ends.
//
// Whether an error is worth retrying is decided by IsTransient: backends mark
// what they know (Permanent, Transient), network failures are recognised
// generically, and anything else is permanent, so an unexpected error is
// reported rather than hidden behind minutes of retries.
package retry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/url"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cairn-backup/cairn/repo"
)

// Defaults for Options fields left zero.
const (
	DefaultMaxElapsed   = 5 * time.Minute
	DefaultInitialDelay = 500 * time.Millisecond
	DefaultMaxDelay     = 30 * time.Second
)

// Options tune the backoff. The zero value uses the defaults.
type Options struct {
	// MaxElapsed bounds how long one operation keeps retrying; the attempt
	// that runs when it ends is the last one.
	MaxElapsed time.Duration
	// InitialDelay is the wait before the first retry; each later wait
	// doubles, up to MaxDelay. Every wait is drawn between half and all of
	// that value, so clients that failed together do not retry together.
	InitialDelay time.Duration
	MaxDelay     time.Duration
	// Notify, when set, is called before each wait, for example to tell
	// the user that the repository is being retried.
	Notify func(op string, err error, wait time.Duration)
}

func (o Options) withDefaults() Options {
	if o.MaxElapsed <= 0 {
		o.MaxElapsed = DefaultMaxElapsed
	}
	if o.InitialDelay <= 0 {
		o.InitialDelay = DefaultInitialDelay
	}
	if o.MaxDelay <= 0 {
		o.MaxDelay = DefaultMaxDelay
	}
	if o.MaxDelay < o.InitialDelay {
		o.MaxDelay = o.InitialDelay
	}
	return o
}

// marked carries a backend's verdict on an error.
type marked struct {
	err       error
	transient bool
}

func (m *marked) Error() string { return m.err.Error() }
func (m *marked) Unwrap() error { return m.err }

// Permanent marks err as not worth retrying. It returns nil for nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &marked{err: err}
}

// Transient marks err as worth retrying. It returns nil for nil.
func Transient(err error) error {
	if err == nil {
		return nil
	}
	return &marked{err: err, transient: true}
}

// IsTransient reports whether an operation that failed with err may succeed
// when tried again. The outermost Permanent or Transient mark decides;
// without one, repo.ErrNotFound and context.Canceled are permanent, and
// timeouts, refused, reset or cut connections (including an HTTP request
// that got EOF instead of an answer) and temporary DNS failures are
// transient. Everything else is permanent.
//
// The Temporary method of net errors is not consulted: it is deprecated and
// says false for a refused connection, which is what a restarting server
// gives.
func IsTransient(err error) bool {
	if err == nil {
		return false
	}
	var m *marked
	if errors.As(err, &m) {
		return m.transient
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, repo.ErrNotFound) {
		return false
	}
	var dns *net.DNSError
	if errors.As(err, &dns) {
		return dns.IsTemporary || dns.IsTimeout
	}
	for _, e := range []error{
		syscall.ECONNREFUSED, syscall.ECONNRESET, syscall.ECONNABORTED, syscall.EPIPE,
		syscall.ETIMEDOUT, syscall.EHOSTUNREACH, syscall.ENETUNREACH, syscall.ENETDOWN,
		io.ErrUnexpectedEOF, context.DeadlineExceeded,
		net.ErrClosed, // the transport's connection, closed under a request being written
	} {
		if errors.Is(err, e) {
			return true
		}
	}
	var ue *url.Error
	if errors.As(err, &ue) && errors.Is(ue.Err, io.EOF) {
		return true // the server closed the connection before answering
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	var op *net.OpError
	if errors.As(err, &op) {
		// A connection that could not be made or broke while in use; TLS
		// alerts ("remote error") are a configuration problem.
		return op.Op == "dial" || op.Op == "read" || op.Op == "write"
	}
	return false
}

// Do calls fn until it succeeds, fails with a permanent error, ctx ends or
// opts.MaxElapsed has passed. op names the operation in errors and in
// Notify. When ctx ends, the error wraps ctx's error (so errors.Is(err,
// context.Canceled) holds) and names the last failure.
func Do(ctx context.Context, opts Options, op string, fn func() error) error {
	opts = opts.withDefaults()
	start := time.Now()
	deadline := start.Add(opts.MaxElapsed)
	delay := opts.InitialDelay
	for attempt := 1; ; attempt++ {
		err := fn()
		if err == nil {
			return nil
		}
		if !IsTransient(err) {
			return err
		}
		if ctx.Err() != nil {
			return stopped(ctx, op, err)
		}
		remaining := time.Until(deadline)
		if remaining <= 0 {
			return fmt.Errorf("%s: giving up after %d attempts in %s: %w",
				op, attempt, time.Since(start).Round(time.Millisecond), err)
		}
		wait := delay/2 + rand.N(delay/2+1)
		wait = min(wait, remaining)
		delay = min(2*delay, opts.MaxDelay)
		if opts.Notify != nil {
			opts.Notify(op, err, wait)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return stopped(ctx, op, err)
		case <-t.C:
		}
	}
}

// stopped is the error of an operation whose context ended while it was
// failing: it matches ctx.Err() and any cancellation cause, and names the
// failure that was being retried.
func stopped(ctx context.Context, op string, last error) error {
	err := ctx.Err()
	if errors.Is(last, err) {
		return last
	}
	if cause := context.Cause(ctx); cause != err {
		return fmt.Errorf("%s: %w (%w; while retrying after: %v)", op, err, cause, last)
	}
	return fmt.Errorf("%s: %w (while retrying after: %v)", op, err, last)
}

// Backend retries the operations of the backend it wraps.
type Backend struct {
	be   repo.Backend
	opts Options
}

var _ repo.Backend = (*Backend)(nil)

// New wraps be so that each operation is retried on transient failures.
//
// Load may call fn more than once: a retry restarts the whole read and hands
// fn a new reader from the requested offset, so fn must not keep what it
// read in an earlier call (repo.ReadAll and repo.ReadAt start over).
// An error of fn is retried only when it is transient, which is the case
// when it comes from the backend's stream (a connection cut mid-read).
//
// List reports each name once even when a failure restarts the listing; it
// keeps the names reported so far for that, which costs memory in
// proportion to the number of files. An error of fn is never retried.
//
// Save is not retried when reading the source failed or it ended early:
// that is not the backend's failure.
func New(be repo.Backend, opts Options) *Backend {
	return &Backend{be: be, opts: opts.withDefaults()}
}

// Unwrap returns the wrapped backend.
func (b *Backend) Unwrap() repo.Backend { return b.be }

func (b *Backend) Location() string { return b.be.Location() }
func (b *Backend) Close() error     { return b.be.Close() }

func (b *Backend) Save(ctx context.Context, h repo.Handle, r io.ReaderAt, size int64) error {
	return Do(ctx, b.opts, "save "+h.String(), func() error {
		src := &sourceReader{r: r, size: size}
		err := b.be.Save(ctx, h, src, size)
		if err != nil && src.failed.Load() {
			return Permanent(err)
		}
		return err
	})
}

// sourceReader notes whether the source of a Save failed, so that a source
// error is not mistaken for a network one however the backend wraps it.
type sourceReader struct {
	r      io.ReaderAt
	size   int64
	failed atomic.Bool // a backend may read parts concurrently
}

// errOutOfOrder means a backend broke the ascending order of List.
var errOutOfOrder = errors.New("backend lists out of order")

// Unwrap returns the source, for a backend that can copy a file without
// reading it through ReadAt.
func (s *sourceReader) Unwrap() io.ReaderAt { return s.r }

func (s *sourceReader) ReadAt(p []byte, off int64) (int, error) {
	n, err := s.r.ReadAt(p, off)
	if err != nil && !(errors.Is(err, io.EOF) && off+int64(n) >= s.size) {
		s.failed.Store(true)
	}
	return n, err
}

func (b *Backend) Load(ctx context.Context, h repo.Handle, offset, length int64, fn func(io.Reader) error) error {
	return Do(ctx, b.opts, "load "+h.String(), func() error {
		return b.be.Load(ctx, h, offset, length, fn)
	})
}

func (b *Backend) Stat(ctx context.Context, h repo.Handle) (repo.FileInfo, error) {
	var fi repo.FileInfo
	err := Do(ctx, b.opts, "stat "+h.String(), func() error {
		var err error
		fi, err = b.be.Stat(ctx, h)
		return err
	})
	return fi, err
}

// List relies on the backend's ascending order: after a failed attempt, the
// next one skips every name up to the last one reported, so fn sees each
// file once and the wrapper keeps one name, not the whole listing.
func (b *Backend) List(ctx context.Context, t repo.FileType, fn func(repo.FileInfo) error) error {
	var last string
	reported := false
	return Do(ctx, b.opts, "list "+string(t), func() error {
		var fnErr error
		prev := "" // the previous name of this attempt
		err := b.be.List(ctx, t, func(fi repo.FileInfo) error {
			if prev != "" && fi.Name <= prev {
				// Skipping by name would be unsafe: stop before a
				// file is lost from the listing.
				fnErr = fmt.Errorf("list %s: %s after %s: %w", t, fi.Name, prev, errOutOfOrder)
				return fnErr
			}
			prev = fi.Name
			if reported && fi.Name <= last {
				return nil // reported by a failed attempt
			}
			last, reported = fi.Name, true
			fnErr = fn(fi)
			return fnErr
		})
		if err != nil && fnErr != nil {
			return Permanent(err)
		}
		return err
	})
}

func (b *Backend) Remove(ctx context.Context, h repo.Handle) error {
	return Do(ctx, b.opts, "remove "+h.String(), func() error {
		return b.be.Remove(ctx, h)
	})
}

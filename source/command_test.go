package source_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cairn-backup/cairn/source"
)

// dump opens s and reads the whole stream; err is Open's, the read's or
// Close's.
func dump(t *testing.T, s source.Spec) (string, []byte, error) {
	t.Helper()
	name, rc, err := source.Open(t.Context(), s)
	if err != nil {
		return "", nil, err
	}
	data, err := io.ReadAll(rc)
	if cerr := rc.Close(); err == nil {
		err = cerr
	}
	return name, data, err
}

// mustDump is dump for streams that must succeed.
func mustDump(t *testing.T, s source.Spec) (string, []byte) {
	t.Helper()
	name, data, err := dump(t, s)
	if err != nil {
		t.Fatalf("dump %s: %v", s.Kind, err)
	}
	return name, data
}

func TestCommandStdoutIsTheComponent(t *testing.T) {
	s := source.Spec{Kind: "command", Name: "grid-caches",
		Backup: []string{"sh", "-c", "printf 'cache a\\ncache b\\n'; echo 'a warning' >&2"}}
	name, data := mustDump(t, s)
	if name != "grid-caches" || string(data) != "cache a\ncache b\n" {
		t.Errorf("got %q: %q", name, data)
	}
}

func TestCommandFailureCarriesItsErrorOutput(t *testing.T) {
	s := source.Spec{Kind: "command", Name: "grid",
		Backup: []string{"sh", "-c", "printf partial; echo 'connecting'>&2; echo 'grid-export: cache \"*\" unreachable' >&2; exit 3"}}
	_, data, err := dump(t, s)
	if err == nil {
		t.Fatalf("no error; got %q", data)
	}
	for _, want := range []string{"exit status 3", `grid-export: cache "*" unreachable`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}

	_, _, err = dump(t, source.Spec{Kind: "command", Name: "x", Backup: []string{"/nonexistent/grid-export"}})
	if err == nil {
		t.Error("a missing command: no error")
	}
}

func TestCommandClosedEarlyStopsTheCommand(t *testing.T) {
	_, rc, err := source.Open(t.Context(), source.Spec{Kind: "command", Name: "x", Backup: []string{"yes"}})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100)
	if _, err := io.ReadFull(rc, buf); err != nil {
		t.Fatal(err)
	}
	done := make(chan error)
	go func() { done <- rc.Close() }()
	select {
	case err := <-done:
		if err == nil {
			t.Error("closing a stream before its end: no error")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not stop the command")
	}
}

func TestCommandCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	_, rc, err := source.Open(ctx, source.Spec{Kind: "command", Name: "x", Backup: []string{"sleep", "60"}})
	if err != nil {
		t.Fatal(err)
	}
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	io.Copy(io.Discard, rc)
	err = rc.Close()
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Close after cancel: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("the cancelled command ran on for %s", d)
	}
}

func TestCommandRestore(t *testing.T) {
	out := filepath.Join(t.TempDir(), "imported")
	s := source.Spec{Kind: "command", Name: "grid",
		Restore: []string{"sh", "-c", `cat > "$0"`, out}}
	want := bytes.Repeat([]byte("entry\n"), 100000)
	if err := source.RestoreLive(t.Context(), s, source.Target{}, bytes.NewReader(want)); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(out)
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("the restore command got %d bytes (%v), want %d", len(got), err, len(want))
	}

	s.Restore = []string{"sh", "-c", "head -c 10 >/dev/null; echo 'grid-import: schema mismatch' >&2; exit 2"}
	err = source.RestoreLive(t.Context(), s, source.Target{}, bytes.NewReader(want))
	if err == nil || !strings.Contains(err.Error(), "grid-import: schema mismatch") {
		t.Errorf("failing restore command: %v", err)
	}
}

// heapWatch samples the heap in use until stop is called, and returns the
// highest value seen.
func heapWatch() (stop func() uint64) {
	var (
		mu   sync.Mutex
		peak uint64
		quit = make(chan struct{})
		done = make(chan struct{})
	)
	sample := func() {
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		mu.Lock()
		peak = max(peak, m.HeapInuse)
		mu.Unlock()
	}
	runtime.GC()
	go func() {
		defer close(done)
		for {
			sample()
			select {
			case <-quit:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	return func() uint64 {
		close(quit)
		<-done
		sample()
		return peak
	}
}

// TestStreamIsNotBuffered passes 200 MiB from a backup command to a
// restore command, which checks the size, while the heap stays small.
func TestStreamIsNotBuffered(t *testing.T) {
	const size = 200 << 20
	s := source.Spec{Kind: "command", Name: "big",
		Backup:  []string{"head", "-c", strconv.Itoa(size), "/dev/urandom"},
		Restore: []string{"sh", "-c", `test "$(wc -c)" -eq "$0"`, strconv.Itoa(size)},
	}
	stop := heapWatch()
	_, rc, err := source.Open(t.Context(), s)
	if err != nil {
		t.Fatal(err)
	}
	counted := &countingReader{r: rc}
	err = source.RestoreLive(t.Context(), s, source.Target{}, counted)
	if cerr := rc.Close(); err == nil {
		err = cerr
	}
	peak := stop()
	if err != nil {
		t.Fatal(err)
	}
	if counted.n != size {
		t.Errorf("%d bytes passed, want %d", counted.n, size)
	}
	t.Logf("heap in use at most %d KiB", peak>>10)
	if peak >= 64<<20 {
		t.Errorf("heap in use reached %d MiB while streaming %d MiB", peak>>20, size>>20)
	}
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// brokenStream gives some bytes, then fails, as a damaged snapshot does.
type brokenStream struct{ sent bool }

func (b *brokenStream) Read(p []byte) (int, error) {
	if !b.sent {
		b.sent = true
		return copy(p, "part of the data\n"), nil
	}
	return 0, errors.New("blob damaged")
}

// A stream that breaks half-way kills the restore command instead of
// giving it a clean end of input: a tool that commits what it read must
// not get the chance.
func TestRestoreBrokenStreamKillsTool(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, "committed")
	// The command commits (writes the marker) only after a clean end of input.
	spec := source.Spec{Kind: "command", Name: "c", Restore: []string{"sh", "-c", "cat >/dev/null && touch " + marker}}
	err := source.RestoreLive(t.Context(), spec, source.Target{}, &brokenStream{})
	if err == nil || !strings.Contains(err.Error(), "blob damaged") {
		t.Fatalf("restore from a broken stream: %v, want the stream's error", err)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the restore command saw a clean end of input and committed")
	}
}

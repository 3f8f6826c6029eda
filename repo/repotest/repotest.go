// Package repotest is the conformance suite every repo.Backend must pass:
// the contract of the Backend interface, checked the way the repository
// relies on it (whole and ranged reads, listing, absence as repo.ErrNotFound,
// atomic saves).
package repotest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"slices"
	"sort"
	"sync"
	"testing"

	"github.com/cairn-backup/cairn/repo"
)

// Run runs the suite. newBackend must return a fresh, empty backend on each
// call and release it through t.Cleanup.
func Run(t *testing.T, newBackend func(t *testing.T) repo.Backend) {
	tests := []struct {
		name string
		fn   func(t *testing.T, be repo.Backend)
	}{
		{"SaveLoad", testSaveLoad},
		{"LoadRange", testLoadRange},
		{"LoadCallbackError", testLoadCallbackError},
		{"Stat", testStat},
		{"List", testList},
		{"ListStopsOnError", testListStopsOnError},
		{"Remove", testRemove},
		{"NotFound", testNotFound},
		{"SaveTwice", testSaveTwice},
		{"TypesAreSeparate", testTypesAreSeparate},
		{"FailedSaveLeavesNothing", testFailedSaveLeavesNothing},
		{"ShortReaderFails", testShortReaderFails},
		{"ReaderEOFWithLastBytes", testReaderEOFWithLastBytes},
		{"SaveIsAtomic", testSaveIsAtomic},
		{"Large", testLarge},
		{"Concurrent", testConcurrent},
		{"CancelledContext", testCancelledContext},
		{"CancelDuringList", testCancelDuringList},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			be := newBackend(t)
			if be.Location() == "" {
				t.Error("Location is empty")
			}
			tc.fn(t, be)
		})
	}
}

// fileTypes are the types stored under content addresses.
var fileTypes = []repo.FileType{repo.KeyFile, repo.PackFile, repo.IndexFile, repo.SnapshotFile, repo.LockFile, repo.RunFile}

func random(seed int64, n int) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

// handle names data by a hash, as the repository does (which hash does not
// matter to a backend).
func handle(t repo.FileType, data []byte) repo.Handle {
	return repo.Handle{Type: t, Name: repo.ID(sha256.Sum256(data)).String()}
}

func save(t *testing.T, be repo.Backend, h repo.Handle, data []byte) {
	t.Helper()
	if err := be.Save(context.Background(), h, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatalf("save %s: %v", h, err)
	}
}

func load(t *testing.T, be repo.Backend, h repo.Handle) []byte {
	t.Helper()
	data, err := repo.ReadAll(context.Background(), be, h)
	if err != nil {
		t.Fatalf("load %s: %v", h, err)
	}
	return data
}

// loadRange reads with Load and io.ReadAll, so a short read is not hidden.
func loadRange(ctx context.Context, be repo.Backend, h repo.Handle, off, n int64) ([]byte, error) {
	var got []byte
	err := be.Load(ctx, h, off, n, func(r io.Reader) error {
		var err error
		got, err = io.ReadAll(r)
		return err
	})
	return got, err
}

func list(t *testing.T, be repo.Backend, ft repo.FileType) map[string]int64 {
	t.Helper()
	m := map[string]int64{}
	prev := ""
	err := be.List(context.Background(), ft, func(fi repo.FileInfo) error {
		if _, dup := m[fi.Name]; dup {
			t.Errorf("list %s: %s reported twice", ft, fi.Name)
		}
		if len(m) > 0 && fi.Name <= prev {
			t.Errorf("list %s: %s after %s, want ascending order", ft, fi.Name, prev)
		}
		prev = fi.Name
		m[fi.Name] = fi.Size
		return nil
	})
	if err != nil {
		t.Fatalf("list %s: %v", ft, err)
	}
	return m
}

// checkAbsent fails unless h is invisible to Stat, Load and List.
func checkAbsent(t *testing.T, be repo.Backend, h repo.Handle) {
	t.Helper()
	ctx := context.Background()
	if _, err := be.Stat(ctx, h); !errors.Is(err, repo.ErrNotFound) {
		t.Errorf("stat %s: %v, want ErrNotFound", h, err)
	}
	called := false
	err := be.Load(ctx, h, 0, 0, func(io.Reader) error { called = true; return nil })
	if !errors.Is(err, repo.ErrNotFound) || called {
		t.Errorf("load %s: %v (callback called: %v), want ErrNotFound", h, err, called)
	}
	if h.Type != repo.ConfigFile {
		if names := list(t, be, h.Type); len(names) != 0 {
			t.Errorf("list %s shows %v, want nothing", h.Type, names)
		}
	}
}

func testSaveLoad(t *testing.T, be repo.Backend) {
	sizes := []int{0, 1, 17, 4096, 1<<20 + 3}
	for i, ft := range fileTypes {
		for j, n := range sizes {
			data := random(int64(10*i+j), n)
			h := handle(ft, data)
			save(t, be, h, data)
			if got := load(t, be, h); !bytes.Equal(got, data) {
				t.Errorf("%s (%d bytes): loaded %d bytes that differ", h, n, len(got))
			}
		}
	}
	// The config is the one file without a name.
	cfg := random(99, 300)
	h := repo.Handle{Type: repo.ConfigFile}
	save(t, be, h, cfg)
	if got := load(t, be, h); !bytes.Equal(got, cfg) {
		t.Error("config differs after a round trip")
	}
	if fi, err := be.Stat(context.Background(), h); err != nil || fi.Size != int64(len(cfg)) {
		t.Errorf("stat config: %+v, %v; want size %d", fi, err, len(cfg))
	}
}

func testLoadRange(t *testing.T, be repo.Backend) {
	const size = 10000
	data := random(1, size)
	h := handle(repo.PackFile, data)
	save(t, be, h, data)
	ctx := context.Background()

	valid := []struct{ off, n int64 }{
		{0, 1}, {0, size}, {5, 100}, {size - 1, 1}, {4096, 4096},
		{0, 0}, {1, 0}, {size - 1, 0}, {1234, 0}, // length 0: to the end
	}
	for _, c := range valid {
		got, err := loadRange(ctx, be, h, c.off, c.n)
		if err != nil {
			t.Errorf("load offset %d length %d: %v", c.off, c.n, err)
			continue
		}
		want := data[c.off:]
		if c.n > 0 {
			want = want[:c.n]
		}
		if !bytes.Equal(got, want) {
			t.Errorf("load offset %d length %d: got %d bytes, want %d equal ones", c.off, c.n, len(got), len(want))
		}
	}

	// A range past the end is an error, not a short read that looks whole.
	beyond := []struct{ off, n int64 }{
		{size - 1, 2}, {0, size + 1}, {size, 1}, {size + 1, 0}, {size + 10, 5}, {1 << 40, 0},
	}
	for _, c := range beyond {
		got, err := loadRange(ctx, be, h, c.off, c.n)
		if err == nil {
			t.Errorf("load offset %d length %d of a %d-byte file: no error (got %d bytes)", c.off, c.n, size, len(got))
		}
	}
	// repo.ReadAt, used for blobs, must fail the same way.
	if _, err := repo.ReadAt(ctx, be, h, size-10, 20, nil); err == nil {
		t.Error("ReadAt beyond the end: no error")
	}
}

func testLoadCallbackError(t *testing.T, be repo.Backend) {
	data := random(2, 100)
	h := handle(repo.IndexFile, data)
	save(t, be, h, data)
	errStop := errors.New("callback failed")
	err := be.Load(context.Background(), h, 0, 0, func(io.Reader) error { return errStop })
	if !errors.Is(err, errStop) {
		t.Fatalf("Load returned %v, want the callback's error", err)
	}
	// A callback that reads only part of the data is fine.
	err = be.Load(context.Background(), h, 0, 0, func(r io.Reader) error {
		_, err := r.Read(make([]byte, 10))
		return err
	})
	if err != nil {
		t.Fatalf("partial read: %v", err)
	}
}

func testStat(t *testing.T, be repo.Backend) {
	for i, n := range []int{0, 1, 100, 65537} {
		data := random(int64(i), n)
		h := handle(repo.SnapshotFile, data)
		save(t, be, h, data)
		fi, err := be.Stat(context.Background(), h)
		if err != nil {
			t.Fatalf("stat %s: %v", h, err)
		}
		if fi.Size != int64(n) || fi.Name != h.Name {
			t.Errorf("stat %s: %+v, want name %s size %d", h, fi, h.Name, n)
		}
	}
}

func testList(t *testing.T, be repo.Backend) {
	counts := map[repo.FileType]int{repo.PackFile: 1000, repo.SnapshotFile: 50, repo.IndexFile: 7}
	want := map[repo.FileType]map[string]int64{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, 1)
	for ft, n := range counts {
		want[ft] = map[string]int64{}
		jobs := make(chan int)
		for range 4 {
			wg.Go(func() {
				for i := range jobs {
					data := random(int64(i)<<8|int64(len(ft)), i%300)
					h := handle(ft, append(data, byte(i), byte(i>>8)))
					if err := be.Save(context.Background(), h, bytes.NewReader(data), int64(len(data))); err != nil {
						select {
						case errs <- err:
						default:
						}
						continue
					}
					mu.Lock()
					want[ft][h.Name] = int64(len(data))
					mu.Unlock()
				}
			})
		}
		for i := range n {
			jobs <- i
		}
		close(jobs)
		wg.Wait()
	}
	select {
	case err := <-errs:
		t.Fatalf("save: %v", err)
	default:
	}
	for _, ft := range append(fileTypes, repo.ConfigFile) {
		got := list(t, be, ft)
		w := want[ft]
		if len(got) != len(w) {
			t.Errorf("list %s: %d files, want %d", ft, len(got), len(w))
		}
		for name, size := range w {
			if gs, ok := got[name]; !ok || gs != size {
				t.Errorf("list %s: %s has size %d (listed: %v), want %d", ft, name, gs, ok, size)
				break
			}
		}
	}
}

func testListStopsOnError(t *testing.T, be repo.Backend) {
	for i := range 10 {
		data := random(int64(i), 10)
		save(t, be, handle(repo.SnapshotFile, data), data)
	}
	errStop := errors.New("stop")
	calls := 0
	err := be.List(context.Background(), repo.SnapshotFile, func(repo.FileInfo) error {
		calls++
		return errStop
	})
	if !errors.Is(err, errStop) {
		t.Fatalf("List returned %v, want the callback's error", err)
	}
	if calls != 1 {
		t.Fatalf("callback called %d times after returning an error, want 1", calls)
	}
}

func testRemove(t *testing.T, be repo.Backend) {
	ctx := context.Background()
	keep := random(1, 50)
	gone := random(2, 50)
	hk, hg := handle(repo.LockFile, keep), handle(repo.LockFile, gone)
	save(t, be, hk, keep)
	save(t, be, hg, gone)
	if err := be.Remove(ctx, hg); err != nil {
		t.Fatalf("remove: %v", err)
	}
	if _, err := be.Stat(ctx, hg); !errors.Is(err, repo.ErrNotFound) {
		t.Errorf("stat after remove: %v, want ErrNotFound", err)
	}
	if _, err := repo.ReadAll(ctx, be, hg); !errors.Is(err, repo.ErrNotFound) {
		t.Errorf("load after remove: %v, want ErrNotFound", err)
	}
	names := list(t, be, repo.LockFile)
	if _, ok := names[hg.Name]; ok || len(names) != 1 {
		t.Errorf("list after remove: %v, want only %s", names, hk.Name)
	}
	if got := load(t, be, hk); !bytes.Equal(got, keep) {
		t.Error("removing one file damaged another")
	}
	// Removing what is absent succeeds (the Backend contract), so a retried
	// or racing removal is not an error.
	if err := be.Remove(ctx, hg); err != nil {
		t.Errorf("second remove: %v, want nil", err)
	}
	// A removed name can be saved again.
	save(t, be, hg, gone)
	if got := load(t, be, hg); !bytes.Equal(got, gone) {
		t.Error("file saved again after removal differs")
	}
}

func testNotFound(t *testing.T, be repo.Backend) {
	ctx := context.Background()
	// Something stored, so "absent" is not just "empty backend".
	data := random(3, 100)
	save(t, be, handle(repo.PackFile, data), data)
	missing := random(4, 100)
	for _, h := range []repo.Handle{
		handle(repo.PackFile, missing), handle(repo.IndexFile, missing), handle(repo.KeyFile, missing),
		handle(repo.SnapshotFile, missing), handle(repo.LockFile, missing), {Type: repo.ConfigFile},
	} {
		if _, err := be.Stat(ctx, h); !errors.Is(err, repo.ErrNotFound) {
			t.Errorf("stat %s: %v, want ErrNotFound", h, err)
		}
		for _, r := range []struct{ off, n int64 }{{0, 0}, {10, 5}} {
			called := false
			err := be.Load(ctx, h, r.off, r.n, func(io.Reader) error { called = true; return nil })
			if !errors.Is(err, repo.ErrNotFound) {
				t.Errorf("load %s at %d+%d: %v, want ErrNotFound", h, r.off, r.n, err)
			}
			if called {
				t.Errorf("load %s: callback called for a missing file", h)
			}
		}
		if err := be.Remove(ctx, h); err != nil {
			t.Errorf("remove missing %s: %v, want nil", h, err)
		}
	}
	// Listing a type with no files is empty, not an error.
	if names := list(t, be, repo.LockFile); len(names) != 0 {
		t.Errorf("list of an empty type: %v", names)
	}
}

func testSaveTwice(t *testing.T, be repo.Backend) {
	data := random(5, 5000)
	h := handle(repo.IndexFile, data)
	save(t, be, h, data)
	// Two writers of the same content race for the same name.
	save(t, be, h, data)
	if got := load(t, be, h); !bytes.Equal(got, data) {
		t.Fatal("file differs after a second save")
	}
	if names := list(t, be, repo.IndexFile); len(names) != 1 || names[h.Name] != int64(len(data)) {
		t.Fatalf("list after two saves: %v", names)
	}
}

func testTypesAreSeparate(t *testing.T, be repo.Backend) {
	name := handle(repo.PackFile, []byte("shared name")).Name
	contents := map[repo.FileType][]byte{}
	for i, ft := range fileTypes {
		data := random(int64(i), 100+i)
		contents[ft] = data
		save(t, be, repo.Handle{Type: ft, Name: name}, data)
	}
	for ft, data := range contents {
		if got := load(t, be, repo.Handle{Type: ft, Name: name}); !bytes.Equal(got, data) {
			t.Errorf("%s/%s holds another type's content", ft, name)
		}
		if names := list(t, be, ft); len(names) != 1 || names[name] != int64(len(data)) {
			t.Errorf("list %s: %v", ft, names)
		}
	}
}

// failingReader serves n bytes, then fails.
type failingReader struct {
	data []byte
	n    int64
}

var errReader = errors.New("source read failed")

func (r *failingReader) ReadAt(p []byte, off int64) (int, error) {
	if off >= r.n {
		return 0, errReader
	}
	k := copy(p, r.data[off:min(r.n, int64(len(r.data)))])
	if k < len(p) {
		return k, errReader
	}
	return k, nil
}

func testFailedSaveLeavesNothing(t *testing.T, be repo.Backend) {
	for _, ft := range []repo.FileType{repo.PackFile, repo.SnapshotFile, repo.ConfigFile} {
		data := random(6, 1<<20)
		h := handle(ft, data)
		if ft == repo.ConfigFile {
			h.Name = ""
		}
		for _, n := range []int64{0, 1, 1 << 19, 1<<20 - 1} {
			err := be.Save(context.Background(), h, &failingReader{data: data, n: n}, int64(len(data)))
			if err == nil {
				t.Errorf("%s: save from a reader failing after %d bytes succeeded", h, n)
			}
			checkAbsent(t, be, h)
		}
		// The same handle saves fine afterwards.
		save(t, be, h, data)
		if got := load(t, be, h); !bytes.Equal(got, data) {
			t.Errorf("%s: save after failed saves stored other content", h)
		}
	}
}

// testShortReaderFails: a source with fewer bytes than the size given to
// Save must not be stored as a shorter file.
func testShortReaderFails(t *testing.T, be repo.Backend) {
	data := random(7, 1000)
	h := handle(repo.PackFile, data)
	err := be.Save(context.Background(), h, bytes.NewReader(data[:600]), int64(len(data)))
	if err == nil {
		fi, _ := be.Stat(context.Background(), h)
		t.Fatalf("save of 1000 bytes from a 600-byte source succeeded (stored %d bytes)", fi.Size)
	}
	checkAbsent(t, be, h)
}

// eofReader returns io.EOF together with the last bytes, as io.ReaderAt allows.
type eofReader struct{ data []byte }

func (r eofReader) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(r.data)) {
		return 0, io.EOF
	}
	n := copy(p, r.data[off:])
	if off+int64(n) == int64(len(r.data)) {
		return n, io.EOF
	}
	return n, nil
}

func testReaderEOFWithLastBytes(t *testing.T, be repo.Backend) {
	for i, n := range []int{0, 1, 1000, 100000} {
		data := random(int64(i), n)
		h := handle(repo.IndexFile, data)
		if err := be.Save(context.Background(), h, eofReader{data}, int64(n)); err != nil {
			t.Fatalf("save %d bytes: %v", n, err)
		}
		if got := load(t, be, h); !bytes.Equal(got, data) {
			t.Fatalf("%d bytes: loaded %d bytes that differ", n, len(got))
		}
	}
}

// gatedReader serves the first half, then waits for release before the rest.
type gatedReader struct {
	data     []byte
	half     chan struct{} // closed once the first half was served
	release  chan struct{}
	halfOnce sync.Once
}

func (r *gatedReader) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(r.data)) {
		return 0, io.EOF
	}
	mid := int64(len(r.data) / 2)
	n := 0
	if off < mid {
		n = copy(p, r.data[off:mid])
		if n < len(p) {
			r.halfOnce.Do(func() { close(r.half) })
			<-r.release
		} else {
			return n, nil
		}
	} else {
		r.halfOnce.Do(func() { close(r.half) })
		<-r.release
	}
	n += copy(p[n:], r.data[off+int64(n):])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func testSaveIsAtomic(t *testing.T, be repo.Backend) {
	data := random(8, 4<<20)
	h := handle(repo.PackFile, data)
	r := &gatedReader{data: data, half: make(chan struct{}), release: make(chan struct{})}
	done := make(chan error, 1)
	go func() { done <- be.Save(context.Background(), h, r, int64(len(data))) }()
	select {
	case <-r.half:
	case err := <-done:
		t.Fatalf("save returned before reading its source: %v", err)
	}
	// Half written: nobody may see the file yet, nor a temporary one.
	checkAbsent(t, be, h)
	close(r.release)
	if err := <-done; err != nil {
		t.Fatalf("save: %v", err)
	}
	if got := load(t, be, h); !bytes.Equal(got, data) {
		t.Fatal("file differs after a gated save")
	}
	if names := list(t, be, repo.PackFile); len(names) != 1 {
		t.Fatalf("list after save: %v, want one file", names)
	}
}

func testLarge(t *testing.T, be repo.Backend) {
	data := random(9, 20<<20)
	h := handle(repo.PackFile, data)
	save(t, be, h, data)
	fi, err := be.Stat(context.Background(), h)
	if err != nil || fi.Size != int64(len(data)) {
		t.Fatalf("stat: %+v, %v; want size %d", fi, err, len(data))
	}
	if got := load(t, be, h); !bytes.Equal(got, data) {
		t.Fatal("20 MiB file differs after a round trip")
	}
	off := int64(10<<20 + 7)
	got, err := loadRange(context.Background(), be, h, off, 1<<20)
	if err != nil || !bytes.Equal(got, data[off:off+1<<20]) {
		t.Fatalf("range from the middle: %d bytes, %v", len(got), err)
	}
	got, err = loadRange(context.Background(), be, h, int64(len(data))-100, 0)
	if err != nil || !bytes.Equal(got, data[len(data)-100:]) {
		t.Fatalf("tail: %d bytes, %v", len(got), err)
	}
}

func testConcurrent(t *testing.T, be repo.Backend) {
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Go(func() {
			for i := range 20 {
				data := random(int64(w*100+i), 1000+w*10+i)
				h := handle(repo.PackFile, data)
				if err := be.Save(ctx, h, bytes.NewReader(data), int64(len(data))); err != nil {
					errs <- err
					return
				}
				got, err := repo.ReadAll(ctx, be, h)
				if err == nil && !bytes.Equal(got, data) {
					err = fmt.Errorf("%s: loaded content differs", h)
				}
				if err != nil {
					errs <- err
					return
				}
				if i%2 == 0 {
					if err := be.Remove(ctx, h); err != nil {
						errs <- err
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if names := list(t, be, repo.PackFile); len(names) != 8*10 {
		t.Errorf("list after concurrent saves and removes: %d files, want 80", len(names))
	}
}

func testCancelledContext(t *testing.T, be repo.Backend) {
	stored := random(10, 100)
	hs := handle(repo.SnapshotFile, stored)
	save(t, be, hs, stored)

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	data := random(11, 1000)
	h := handle(repo.SnapshotFile, data)
	if err := be.Save(ctx, h, bytes.NewReader(data), int64(len(data))); !errors.Is(err, context.Canceled) {
		t.Errorf("save with a cancelled context: %v, want context.Canceled", err)
	}
	if _, err := be.Stat(context.Background(), h); !errors.Is(err, repo.ErrNotFound) {
		t.Errorf("a save with a cancelled context stored the file: %v", err)
	}
	called := false
	err := be.Load(ctx, hs, 0, 0, func(io.Reader) error { called = true; return nil })
	if !errors.Is(err, context.Canceled) || called {
		t.Errorf("load with a cancelled context: %v (callback called: %v), want context.Canceled", err, called)
	}
	err = be.List(ctx, repo.SnapshotFile, func(repo.FileInfo) error { return nil })
	if !errors.Is(err, context.Canceled) {
		t.Errorf("list with a cancelled context: %v, want context.Canceled", err)
	}
	// Nothing was lost.
	if got := load(t, be, hs); !bytes.Equal(got, stored) {
		t.Error("stored file damaged")
	}
}

func testCancelDuringList(t *testing.T, be repo.Backend) {
	var names []string
	for i := range 20 {
		data := random(int64(i), 10)
		h := handle(repo.PackFile, data)
		save(t, be, h, data)
		names = append(names, h.Name)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var seen []string
	err := be.List(ctx, repo.PackFile, func(fi repo.FileInfo) error {
		seen = append(seen, fi.Name)
		cancel()
		return nil
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("list cancelled by its callback: %v after %d files, want context.Canceled", err, len(seen))
	}
	sort.Strings(names)
	for _, n := range seen {
		if _, ok := slices.BinarySearch(names, n); !ok {
			t.Errorf("list reported %s, which was never saved", n)
		}
	}
}

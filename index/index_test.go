package index_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"testing"

	"github.com/cairn-backup/cairn/crypto"
	"github.com/cairn-backup/cairn/index"
	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/repo/mem"
)

func newRepo(t *testing.T) *repo.Repo {
	t.Helper()
	r, err := repo.Init(context.Background(), mem.New(), []byte("pw"), repo.InitOptions{KDF: crypto.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func load(t *testing.T, r *repo.Repo, cacheDir string) *index.Index {
	t.Helper()
	idx, err := index.Load(context.Background(), r, index.Options{CacheDir: cacheDir})
	if err != nil {
		t.Fatalf("load index (cache %q): %v", cacheDir, err)
	}
	t.Cleanup(func() { idx.Close() })
	return idx
}

// fakePack makes the entries of a pack with n blobs named from seed.
func fakePack(seed, n int) (repo.ID, []repo.PackedBlob) {
	pack := repo.ID(crypto.Hash(fmt.Appendf(nil, "pack %d", seed)))
	blobs := make([]repo.PackedBlob, n)
	off := uint32(0)
	for i := range blobs {
		blobs[i] = repo.PackedBlob{
			Type: repo.BlobType(i % 2), ID: repo.ID(crypto.Hash(fmt.Appendf(nil, "blob %d/%d", seed, i))),
			Offset: off, Length: uint32(100 + i), RawLength: uint32(50 + i),
		}
		off += blobs[i].Length
	}
	return pack, blobs
}

// addFile writes one index file holding packs made from seeds and returns
// its blobs with their packs set.
func addFile(t *testing.T, r *repo.Repo, seeds ...int) (repo.ID, []repo.PackedBlob) {
	t.Helper()
	idx := load(t, r, "")
	before := map[repo.ID]bool{}
	for _, id := range idx.Files() {
		before[id] = true
	}
	var all []repo.PackedBlob
	for _, s := range seeds {
		p, blobs := fakePack(s, 5)
		idx.Add(p, blobs)
		all = append(all, blobs...)
	}
	if err := idx.Flush(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	for _, id := range idx.Files() {
		if !before[id] {
			return id, all
		}
	}
	t.Fatal("Flush wrote no index file")
	return repo.ID{}, nil
}

// entries lists everything an index knows, sorted.
func entries(t *testing.T, idx *index.Index) []repo.PackedBlob {
	t.Helper()
	var list []repo.PackedBlob
	if err := idx.Each(func(e repo.PackedBlob) error { list = append(list, e); return nil }); err != nil {
		t.Fatal(err)
	}
	sort.Slice(list, func(i, j int) bool {
		if list[i].ID != list[j].ID {
			return list[i].ID.String() < list[j].ID.String()
		}
		return list[i].Type < list[j].Type
	})
	return list
}

func sortedFiles(idx *index.Index) []string {
	var s []string
	for _, id := range idx.Files() {
		s = append(s, id.String())
	}
	sort.Strings(s)
	return s
}

// checkHas fails unless idx finds exactly these blobs where they were put.
func checkHas(t *testing.T, what string, idx *index.Index, blobs []repo.PackedBlob) {
	t.Helper()
	for _, b := range blobs {
		got, ok := idx.Lookup(b.Type, b.ID)
		if !ok {
			t.Fatalf("%s: blob %s missing", what, b.ID.Short())
		}
		if got != b {
			t.Fatalf("%s: blob %s is %+v, want %+v", what, b.ID.Short(), got, b)
		}
		if !idx.Has(b.Type, b.ID) {
			t.Fatalf("%s: Has(%s) is false", what, b.ID.Short())
		}
		if idx.Has(1-b.Type, b.ID) {
			t.Fatalf("%s: blob %s found under the other type", what, b.ID.Short())
		}
	}
}

func checkHasNot(t *testing.T, what string, idx *index.Index, blobs []repo.PackedBlob) {
	t.Helper()
	for _, b := range blobs {
		if e, ok := idx.Lookup(b.Type, b.ID); ok {
			t.Fatalf("%s: blob %s still found, in pack %s", what, b.ID.Short(), e.Pack.Short())
		}
	}
}

func TestAddFlush(t *testing.T) {
	ctx := context.Background()
	r := newRepo(t)
	idx := load(t, r, t.TempDir())
	p, blobs := fakePack(1, 7)
	idx.Add(p, blobs)
	checkHas(t, "pending", idx, blobs)
	if idx.Unsaved() != 7 {
		t.Fatalf("Unsaved %d, want 7", idx.Unsaved())
	}
	for _, b := range blobs {
		if b.Pack != p {
			t.Fatal("Add did not set the pack")
		}
	}
	if err := idx.Flush(ctx, r); err != nil {
		t.Fatal(err)
	}
	if idx.Unsaved() != 0 || len(idx.Files()) != 1 {
		t.Fatalf("after flush: %d unsaved, files %v", idx.Unsaved(), idx.Files())
	}
	checkHas(t, "flushed", idx, blobs)
	if got := entries(t, idx); len(got) != 7 {
		t.Fatalf("Each gave %d entries, want 7", len(got))
	}
	// Nothing new: no file.
	if err := idx.Flush(ctx, r); err != nil {
		t.Fatal(err)
	}
	n := 0
	if err := r.ListIDs(ctx, repo.IndexFile, func(repo.ID, int64) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Fatalf("%d index files, want 1", n)
	}
	// What Flush wrote decodes to what was added.
	f, err := index.LoadFile(ctx, r, idx.Files()[0])
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Packs) != 1 || f.Packs[0].Pack != p || !reflect.DeepEqual(f.Packs[0].Blobs, blobs) {
		t.Fatalf("index file holds %+v", f)
	}
}

// TestCacheGivesSameAnswers: with or without the cache, cold or warm, and
// after the cache is deleted, an index knows the same blobs.
func TestCacheGivesSameAnswers(t *testing.T) {
	r := newRepo(t)
	var all []repo.PackedBlob
	for i := range 4 {
		_, blobs := addFile(t, r, 2*i, 2*i+1)
		all = append(all, blobs...)
	}
	cache := t.TempDir()
	plain := load(t, r, "")
	want := entries(t, plain)
	if len(want) != len(all) {
		t.Fatalf("index without cache knows %d blobs, want %d", len(want), len(all))
	}
	checkHas(t, "no cache", plain, all)

	steps := []struct {
		name   string
		before func()
	}{
		{"cold cache", func() {}},
		{"warm cache", func() {}},
		{"cache deleted", func() {
			if err := os.RemoveAll(cache); err != nil {
				t.Fatal(err)
			}
		}},
		{"cache dir's repository subdir deleted", func() {
			if err := os.RemoveAll(filepath.Join(cache, r.Config().ID.String())); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, s := range steps {
		s.before()
		idx, err := index.Load(context.Background(), r, index.Options{CacheDir: cache})
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		checkHas(t, s.name, idx, all)
		if got := entries(t, idx); !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: Each gave %d entries, differing from the index without cache", s.name, len(got))
		}
		if !reflect.DeepEqual(sortedFiles(idx), sortedFiles(plain)) {
			t.Fatalf("%s: files %v, want %v", s.name, sortedFiles(idx), sortedFiles(plain))
		}
		idx.Close()
	}
	if _, err := os.Stat(filepath.Join(cache, r.Config().ID.String(), "index.db")); err != nil {
		t.Fatalf("no cache database where docs/format.md puts it: %v", err)
	}
}

// TestCacheSeesNewFiles: an index file written by another process after the
// cache was filled is picked up on the next load.
func TestCacheSeesNewFiles(t *testing.T) {
	r := newRepo(t)
	cache := t.TempDir()
	_, old := addFile(t, r, 1)
	idx := load(t, r, cache)
	checkHas(t, "first load", idx, old)
	idx.Close()

	// Another process, with its own (or no) cache, adds a file.
	_, fresh := addFile(t, r, 2)
	other := load(t, r, t.TempDir())
	p, more := fakePack(3, 4)
	other.Add(p, more)
	if err := other.Flush(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	other.Close()

	idx = load(t, r, cache)
	checkHas(t, "old", idx, old)
	checkHas(t, "added by another process", idx, fresh)
	checkHas(t, "added by another cached process", idx, more)
	if len(idx.Files()) != 3 {
		t.Fatalf("%d files merged, want 3", len(idx.Files()))
	}
}

// TestSuperseded: an index file that names others replaces them; whatever
// only the superseded files held is gone, with or without a cache that
// merged them earlier.
func TestSuperseded(t *testing.T) {
	ctx := context.Background()
	for _, mode := range []string{"no cache", "fresh cache", "warm cache"} {
		t.Run(mode, func(t *testing.T) {
			r := newRepo(t)
			cache := ""
			if mode != "no cache" {
				cache = t.TempDir()
			}
			f1, blobs1 := addFile(t, r, 1)
			_, blobs2 := addFile(t, r, 2)
			if mode == "warm cache" {
				idx := load(t, r, cache)
				checkHas(t, "before", idx, append(blobs1, blobs2...))
				idx.Close()
			}
			// A repack: the first two blobs of file 1 move to a new pack;
			// the rest of file 1 is dropped.
			newPack := repo.ID(crypto.Hash([]byte("repacked")))
			moved := append([]repo.PackedBlob(nil), blobs1[:2]...)
			moved[1].Offset = moved[0].Length
			for i := range moved {
				moved[i].Pack = newPack
			}
			repl := &index.File{Supersedes: []repo.ID{f1}, Packs: []index.PackEntries{{Pack: newPack, Blobs: moved}}}
			f3, err := r.SaveFile(ctx, repo.IndexFile, repl.Encode())
			if err != nil {
				t.Fatal(err)
			}
			check := func(what string) {
				t.Helper()
				idx := load(t, r, cache)
				checkHas(t, what, idx, moved)
				checkHas(t, what, idx, blobs2)
				checkHasNot(t, what, idx, blobs1[2:])
				hasF3 := false
				for _, id := range idx.Files() {
					if id == f1 {
						t.Fatalf("%s: superseded file %s counted as merged", what, f1.Short())
					}
					hasF3 = hasF3 || id == f3
				}
				if !hasF3 {
					t.Fatalf("%s: the replacing file is not among the merged ones", what)
				}
				if n := len(entries(t, idx)); n != len(moved)+len(blobs2) {
					t.Fatalf("%s: %d entries, want %d", what, n, len(moved)+len(blobs2))
				}
				idx.Close()
			}
			check("superseded file present")
			check("superseded file present, second load")
			// Prune then deletes the superseded file.
			if err := r.RemoveFile(ctx, repo.IndexFile, f1); err != nil {
				t.Fatal(err)
			}
			check("superseded file deleted")
		})
	}
}

// TestCacheDropsDeletedFiles: an index file removed from the repository
// (without a replacement) takes its blobs out of a cache that merged it.
func TestCacheDropsDeletedFiles(t *testing.T) {
	ctx := context.Background()
	r := newRepo(t)
	cache := t.TempDir()
	_, keep := addFile(t, r, 1)
	gone, lost := addFile(t, r, 2)
	idx := load(t, r, cache)
	checkHas(t, "before", idx, append(keep, lost...))
	idx.Close()
	if err := r.RemoveFile(ctx, repo.IndexFile, gone); err != nil {
		t.Fatal(err)
	}
	idx = load(t, r, cache)
	checkHas(t, "after", idx, keep)
	checkHasNot(t, "after", idx, lost)
	if len(idx.Files()) != 1 {
		t.Fatalf("files %v, want one", idx.Files())
	}
}

// TestCacheInUse: a second process finds the cache locked and goes on
// without it, with the same answers.
func TestCacheInUse(t *testing.T) {
	r := newRepo(t)
	cache := t.TempDir()
	_, blobs := addFile(t, r, 1, 2)
	first := load(t, r, cache)
	second := load(t, r, cache)
	checkHas(t, "holder", first, blobs)
	checkHas(t, "second", second, blobs)
}

func TestDamagedCacheBypassed(t *testing.T) {
	r := newRepo(t)
	cache := t.TempDir()
	_, blobs := addFile(t, r, 1)
	db := filepath.Join(cache, r.Config().ID.String(), "index.db")
	if err := os.MkdirAll(filepath.Dir(db), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(db, []byte("not a bbolt database, just some bytes of garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	idx := load(t, r, cache)
	checkHas(t, "damaged cache", idx, blobs)
}

func TestLoadDamagedIndexFile(t *testing.T) {
	ctx := context.Background()
	r := newRepo(t)
	addFile(t, r, 1)
	if _, err := r.SaveFile(ctx, repo.IndexFile, []byte{9, 9, 9}); err != nil {
		t.Fatal(err)
	}
	for _, cache := range []string{"", t.TempDir()} {
		if idx, err := index.Load(ctx, r, index.Options{CacheDir: cache}); err == nil {
			idx.Close()
			t.Errorf("cache %q: an undecodable index file was ignored", cache)
		}
	}
}

// loadCounter counts the index files read from the repository.
type loadCounter struct {
	repo.Backend
	n int
}

func (b *loadCounter) Load(ctx context.Context, h repo.Handle, offset, length int64, fn func(io.Reader) error) error {
	if h.Type == repo.IndexFile {
		b.n++
	}
	return b.Backend.Load(ctx, h, offset, length, fn)
}

// TestCacheRecordsFileWithoutEntries: an index file that only supersedes
// others (a prune that kept nothing of them) is merged like any other, so a
// warm cache reads no index file again, also when it is the only file left.
func TestCacheRecordsFileWithoutEntries(t *testing.T) {
	ctx := context.Background()
	be := &loadCounter{Backend: mem.New()}
	r, err := repo.Init(ctx, be, []byte("pw"), repo.InitOptions{KDF: crypto.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}})
	if err != nil {
		t.Fatal(err)
	}
	f1, blobs1 := addFile(t, r, 1)
	empty := &index.File{Supersedes: []repo.ID{f1}}
	if _, err := r.SaveFile(ctx, repo.IndexFile, empty.Encode()); err != nil {
		t.Fatal(err)
	}
	if err := r.RemoveFile(ctx, repo.IndexFile, f1); err != nil {
		t.Fatal(err)
	}
	cache := t.TempDir()
	idx := load(t, r, cache)
	checkHasNot(t, "cold cache", idx, blobs1)
	idx.Close()

	be.n = 0
	idx = load(t, r, cache)
	checkHasNot(t, "warm cache", idx, blobs1)
	if be.n != 0 {
		t.Fatalf("a load with a warm cache read %d index files, want none", be.n)
	}
}

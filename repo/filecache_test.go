package repo_test

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/repo/mem"
)

type countingBackend struct {
	repo.Backend
	loads atomic.Int64
}

func (c *countingBackend) Load(ctx context.Context, h repo.Handle, off, n int64, fn func(io.Reader) error) error {
	c.loads.Add(1)
	return c.Backend.Load(ctx, h, off, n, fn)
}

// TestFileCache: snapshots and index files saved or loaded once are read
// from the cache afterwards; a damaged copy is fetched again.
func TestFileCache(t *testing.T) {
	ctx := context.Background()
	be := &countingBackend{Backend: mem.New()}
	r := initRepo(t, be, "pw")
	dir := t.TempDir()
	r.SetCache(repo.NewFileCache(dir))
	id, err := r.SaveFile(ctx, repo.SnapshotFile, []byte(`{"a":1}`))
	if err != nil {
		t.Fatal(err)
	}
	load := func(what string, wantLoads int64) {
		t.Helper()
		before := be.loads.Load()
		b, err := r.LoadFile(ctx, repo.SnapshotFile, id)
		if err != nil || string(b) != `{"a":1}` {
			t.Fatalf("%s: %q, %v", what, b, err)
		}
		if n := be.loads.Load() - before; n != wantLoads {
			t.Fatalf("%s: %d loads from the repository, want %d", what, n, wantLoads)
		}
	}
	load("saved here", 0)
	r.SetCache(repo.NewFileCache(t.TempDir()))
	load("cold cache", 1)
	load("warm cache", 0)

	r.SetCache(repo.NewFileCache(dir))
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			_ = os.WriteFile(p, []byte("damaged"), 0o600)
		}
		return nil
	})
	load("damaged cache", 1)
	load("repaired cache", 0)
}

// cachedFiles counts the regular files under dir.
func cachedFiles(t *testing.T, dir string) int {
	t.Helper()
	n := 0
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			n++
		}
		return nil
	})
	return n
}

// TestFileCacheForgetsRemovedFiles: a file removed here, or by another host
// (seen when a listing no longer shows it), leaves the cache too.
func TestFileCacheForgetsRemovedFiles(t *testing.T) {
	ctx := context.Background()
	be := mem.New()
	r := initRepo(t, be, "pw")
	dir := t.TempDir()
	r.SetCache(repo.NewFileCache(dir))
	var ids []repo.ID
	for i := range 3 {
		id, err := r.SaveFile(ctx, repo.SnapshotFile, []byte{'{', '"', 'a' + byte(i), '"', ':', '1', '}'})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if n := cachedFiles(t, dir); n != 3 {
		t.Fatalf("%d files cached after saving 3 snapshots", n)
	}
	if err := r.RemoveFile(ctx, repo.SnapshotFile, ids[0]); err != nil {
		t.Fatal(err)
	}
	if n := cachedFiles(t, dir); n != 2 {
		t.Fatalf("%d files cached after removing one of 3 snapshots", n)
	}
	// Another host removes one: the next listing drops its copy.
	if err := be.Remove(ctx, repo.Handle{Type: repo.SnapshotFile, Name: ids[1].String()}); err != nil {
		t.Fatal(err)
	}
	var listed int
	if err := r.ListIDs(ctx, repo.SnapshotFile, func(repo.ID, int64) error { listed++; return nil }); err != nil {
		t.Fatal(err)
	}
	if n := cachedFiles(t, dir); listed != 1 || n != 1 {
		t.Fatalf("after a listing of %d snapshots, %d files cached, want 1", listed, n)
	}
	if _, err := r.LoadFile(ctx, repo.SnapshotFile, ids[2]); err != nil {
		t.Fatalf("the snapshot left: %v", err)
	}
}

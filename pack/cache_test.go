package pack_test

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/cairn-backup/cairn/pack"
	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/repo/mem"
)

// loadCounter counts the pack reads that reach the backend.
type loadCounter struct {
	repo.Backend
	packLoads atomic.Int64
}

func (c *loadCounter) Load(ctx context.Context, h repo.Handle, off, n int64, fn func(io.Reader) error) error {
	if h.Type == repo.PackFile {
		c.packLoads.Add(1)
	}
	return c.Backend.Load(ctx, h, off, n, fn)
}

// TestTreeCache: tree blobs are read from the cache once their pack is
// there, whether this process wrote it or downloaded it; a damaged copy is
// replaced from the repository, never trusted; data blobs always come from
// the repository.
func TestTreeCache(t *testing.T) {
	ctx := context.Background()
	be := &loadCounter{Backend: mem.New()}
	r := newRepo(t, be)
	dir := t.TempDir()
	r.SetCache(repo.NewFileCache(dir))
	s := newStore(t, r)
	var tree, data repo.ID
	err := s.WithUploader(ctx, pack.Options{}, func(ctx context.Context) error {
		var err error
		if tree, _, err = s.SaveBlob(ctx, repo.TreeBlob, []byte(`{"nodes":[]}`)); err != nil {
			return err
		}
		data, _, err = s.SaveBlob(ctx, repo.DataBlob, []byte("some file content"))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	load := func(what string, typ repo.BlobType, id repo.ID, wantLoads int64) {
		t.Helper()
		before := be.packLoads.Load()
		got, err := s.LoadBlob(ctx, typ, id, nil)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if len(got) == 0 {
			t.Fatalf("%s: empty blob", what)
		}
		if n := be.packLoads.Load() - before; n != wantLoads {
			t.Fatalf("%s: %d pack reads from the repository, want %d", what, n, wantLoads)
		}
	}
	load("tree written here", repo.TreeBlob, tree, 0)
	load("data blob", repo.DataBlob, data, 1)

	// A fresh cache: the pack is downloaded once, then served locally.
	r.SetCache(repo.NewFileCache(t.TempDir()))
	load("tree, cold cache", repo.TreeBlob, tree, 1)
	load("tree, warm cache", repo.TreeBlob, tree, 0)

	// Damage every cached copy: the repository is asked again.
	cacheDir := dir
	r.SetCache(repo.NewFileCache(cacheDir))
	n := 0
	_ = filepath.WalkDir(cacheDir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			n++
			if err := os.WriteFile(p, []byte("garbage garbage garbage garbage"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		return nil
	})
	if n == 0 {
		t.Fatal("nothing was cached")
	}
	load("tree, damaged cache", repo.TreeBlob, tree, 1)
}

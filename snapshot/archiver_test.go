package snapshot_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cairn-backup/cairn/crypto"
	"github.com/cairn-backup/cairn/index"
	"github.com/cairn-backup/cairn/pack"
	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/repo/local"
	"github.com/cairn-backup/cairn/snapshot"
)

func newStore(t testing.TB) *pack.Store {
	t.Helper()
	be, err := local.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := be.Create(); err != nil {
		t.Fatal(err)
	}
	return newStoreOn(t, be)
}

// newStoreOn makes a repository on be and a store on it.
func newStoreOn(t testing.TB, be repo.Backend) *pack.Store {
	t.Helper()
	ctx := context.Background()
	r, err := repo.Init(ctx, be, []byte("pw"), repo.InitOptions{KDF: crypto.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}})
	if err != nil {
		t.Fatal(err)
	}
	idx, err := index.Load(ctx, r, index.Options{CacheDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { idx.Close() })
	return pack.NewStore(r, idx)
}

// writeTree makes n files of assorted sizes (some above the minimum chunk
// size, so they are split and spread over the workers) and returns their contents.
func writeTree(t *testing.T, dir string, n int) map[string][]byte {
	t.Helper()
	rnd := rand.New(rand.NewSource(1))
	files := map[string][]byte{}
	for i := range n {
		size := rnd.Intn(4096)
		if i%10 == 0 {
			size = 600<<10 + rnd.Intn(3<<20)
		}
		data := make([]byte, size)
		rnd.Read(data)
		rel := filepath.Join("d"+strconv.Itoa(i%5), "sub", "f"+strconv.Itoa(i))
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		files[rel] = data
	}
	return files
}

// subtreeOf follows the synthetic directories of the absolute path dir down
// from root and returns dir's tree.
func subtreeOf(t *testing.T, store *pack.Store, root repo.ID, dir string) repo.ID {
	t.Helper()
	id := root
	for _, el := range strings.Split(strings.Trim(dir, "/"), "/") {
		tree, err := snapshot.LoadTree(context.Background(), store, id)
		if err != nil {
			t.Fatal(err)
		}
		n := tree.Find([]byte(el))
		if n == nil || n.Subtree == nil {
			t.Fatalf("%s: no directory %q in the snapshot", dir, el)
		}
		id = *n.Subtree
	}
	return id
}

// restoreAndCompare restores sn into dst with verification and checks that
// every file of src in files came back with its content.
func restoreAndCompare(t *testing.T, store *pack.Store, sn *snapshot.Snapshot, dst, src string, files map[string][]byte) {
	t.Helper()
	st, err := snapshot.Restore(context.Background(), store, sn, snapshot.RestoreOptions{Target: dst, Verify: true})
	if err != nil {
		t.Fatal(err)
	}
	if st.Files != len(files) || st.Verified != len(files) {
		t.Fatalf("restore stats %+v, want %d files verified", st, len(files))
	}
	for rel, want := range files {
		got, err := os.ReadFile(filepath.Join(dst, src, rel))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: restored content differs", rel)
		}
	}
}

func TestBackupRestoreRoundTrip(t *testing.T) {
	ctx := context.Background()
	store := newStore(t)
	src := t.TempDir()
	dst := t.TempDir() // before the backup: a new sibling would change the parent's mtime
	files := writeTree(t, src, 60)

	sn, err := snapshot.Backup(ctx, store, snapshot.BackupOptions{Paths: []string{src}, Hostname: "h"})
	if err != nil {
		t.Fatal(err)
	}
	if sn.Summary.FilesNew != len(files) || sn.Summary.FilesUnmodified != 0 {
		t.Fatalf("first backup: %+v", sn.Summary)
	}
	if _, err := snapshot.Load(ctx, store.Repo(), sn.ID); err != nil {
		t.Fatalf("snapshot not stored: %v", err)
	}

	restoreAndCompare(t, store, sn, dst, src, files)

	// Unchanged: nothing is read or added. The directories above src are in
	// the shared temp dir, which other processes change: their trees may differ.
	sn2, err := snapshot.Backup(ctx, store, snapshot.BackupOptions{Paths: []string{src}, Parent: sn, Hostname: "h"})
	if err != nil {
		t.Fatal(err)
	}
	if s := sn2.Summary; s.FilesUnmodified != len(files) || s.FilesNew+s.FilesChanged != 0 || s.DataBlobs != 0 || s.TreeBlobs > strings.Count(src, "/") {
		t.Fatalf("unchanged re-backup: %+v", s)
	}
	if subtreeOf(t, store, sn2.Tree, src) != subtreeOf(t, store, sn.Tree, src) {
		t.Fatalf("unchanged tree got a new id")
	}

	// Force re-reads everything but dedup stores nothing new.
	sn3, err := snapshot.Backup(ctx, store, snapshot.BackupOptions{Paths: []string{src}, Parent: sn, Force: true, Hostname: "h"})
	if err != nil {
		t.Fatal(err)
	}
	if s := sn3.Summary; s.FilesChanged != len(files) || s.DataBlobs != 0 || s.TreeBlobs > strings.Count(src, "/") {
		t.Fatalf("forced re-backup: %+v", s)
	}
}

func TestBackupDryRunStoresNothing(t *testing.T) {
	ctx := context.Background()
	store := newStore(t)
	src := t.TempDir()
	writeTree(t, src, 20)
	sn, err := snapshot.Backup(ctx, store, snapshot.BackupOptions{Paths: []string{src}, DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if sn.Summary.FilesNew != 20 || sn.Summary.DataBlobs == 0 {
		t.Fatalf("dry run summary: %+v", sn.Summary)
	}
	list, err := snapshot.List(ctx, store.Repo(), nil)
	if err != nil || len(list) != 0 {
		t.Fatalf("dry run saved snapshots: %v %v", list, err)
	}
	n := 0
	_ = store.Repo().ListIDs(ctx, repo.PackFile, func(repo.ID, int64) error { n++; return nil })
	if n != 0 {
		t.Fatalf("dry run stored %d packs", n)
	}
}

func TestBackupMissingPaths(t *testing.T) {
	ctx := context.Background()
	store := newStore(t)
	src := t.TempDir()
	writeTree(t, src, 3)
	missing := filepath.Join(src, "nope")

	_, err := snapshot.Backup(ctx, store, snapshot.BackupOptions{Paths: []string{missing}})
	if !errors.Is(err, snapshot.ErrNoPaths) {
		t.Fatalf("only missing paths: err = %v, want ErrNoPaths", err)
	}
	sn, err := snapshot.Backup(ctx, store, snapshot.BackupOptions{Paths: []string{src, missing}})
	if !errors.Is(err, snapshot.ErrPartial) || sn == nil {
		t.Fatalf("one missing path: err = %v, want ErrPartial with a snapshot", err)
	}
	if len(sn.Paths) != 1 || sn.Paths[0] != src {
		t.Fatalf("paths = %v, want only %s", sn.Paths, src)
	}
}

func TestBackupStdin(t *testing.T) {
	ctx := context.Background()
	store := newStore(t)
	data := bytes.Repeat([]byte("row 1, some text\n"), 200000)
	sn, err := snapshot.Backup(ctx, store, snapshot.BackupOptions{Stdin: bytes.NewReader(data), StdinName: "dump.sql"})
	if err != nil {
		t.Fatal(err)
	}
	n, err := snapshot.FindNode(ctx, store, sn, "/dump.sql")
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := snapshot.WriteContent(ctx, store, n, &buf); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), data) {
		t.Fatal("stdin content differs")
	}
}

// loadCounter counts the loads of each pack.
type loadCounter struct {
	repo.Backend
	mu    sync.Mutex
	loads map[string]int
}

func (c *loadCounter) Load(ctx context.Context, h repo.Handle, offset, length int64, fn func(io.Reader) error) error {
	if h.Type == repo.PackFile {
		c.mu.Lock()
		c.loads[h.Name]++
		c.mu.Unlock()
	}
	return c.Backend.Load(ctx, h, offset, length, fn)
}

func (c *loadCounter) Unwrap() repo.Backend { return c.Backend }

func newLoadCounter(be repo.Backend) *loadCounter {
	return &loadCounter{Backend: be, loads: map[string]int{}}
}

// reset forgets the loads counted so far.
func (c *loadCounter) reset() {
	c.mu.Lock()
	clear(c.loads)
	c.mu.Unlock()
}

// total is the number of pack loads counted.
func (c *loadCounter) total() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, k := range c.loads {
		n += k
	}
	return n
}

// A restore reads each pack once, not once per file or per blob: the
// content of many files, of a file spread over several packs and of files
// sharing blobs comes from one request per pack.
func TestRestoreReadsEachPackOnce(t *testing.T) {
	ctx := context.Background()
	be, err := local.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := be.Create(); err != nil {
		t.Fatal(err)
	}
	counter := newLoadCounter(be)
	store := newStoreOn(t, counter)

	src := t.TempDir()
	rnd := rand.New(rand.NewSource(3))
	files := map[string][]byte{}
	add := func(name string, data []byte) {
		files[name] = data
		p := filepath.Join(src, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	big := make([]byte, 20<<20) // more than a pack
	rnd.Read(big)
	add("big", big)
	shared := make([]byte, 3<<20)
	rnd.Read(shared)
	add("a/shared", shared)
	add("b/shared-copy", shared)
	for i := range 300 {
		small := make([]byte, 1+rnd.Intn(8<<10))
		rnd.Read(small)
		add(filepath.Join("small", strconv.Itoa(i%7), strconv.Itoa(i)), small)
	}
	sn, err := snapshot.Backup(ctx, store, snapshot.BackupOptions{Paths: []string{src}})
	if err != nil {
		t.Fatal(err)
	}
	dataPacks := map[string]bool{}
	for name := range files {
		n, err := snapshot.FindNode(ctx, store, sn, filepath.Join(src, name))
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range n.Content {
			e, ok := store.Index().Lookup(repo.DataBlob, id)
			if !ok {
				t.Fatalf("%s: blob %s not in the index", name, id.Short())
			}
			dataPacks[e.Pack.String()] = true
		}
	}
	if len(dataPacks) < 2 {
		t.Fatalf("the content lies in %d pack; the test needs several", len(dataPacks))
	}

	counter.reset()
	restoreAndCompare(t, store, sn, t.TempDir(), src, files)
	for p := range dataPacks {
		if n := counter.loads[p]; n != 1 {
			t.Errorf("data pack %s read %d times, want once", p[:8], n)
		}
	}
}

// A file whose blobs lie in several packs is written by several workers,
// one per pack: its content and metadata come out whole, and when a pack
// fails the file is removed, never left half written.
func TestRestoreLargeFileInParts(t *testing.T) {
	ctx := context.Background()
	store := newStore(t)
	src := t.TempDir()
	big := make([]byte, 21<<20)
	rand.New(rand.NewSource(2)).Read(big)
	bigPath := filepath.Join(src, "dump.sql")
	if err := os.WriteFile(bigPath, big, 0o640); err != nil {
		t.Fatal(err)
	}
	mtime := time.Date(2024, 3, 1, 12, 0, 0, 0, time.UTC)
	if err := os.Chtimes(bigPath, mtime, mtime); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "small"), []byte("small"), 0o644); err != nil {
		t.Fatal(err)
	}
	sn, err := snapshot.Backup(ctx, store, snapshot.BackupOptions{Paths: []string{src}})
	if err != nil {
		t.Fatal(err)
	}

	dst := t.TempDir()
	st, err := snapshot.Restore(ctx, store, sn, snapshot.RestoreOptions{Target: dst, Verify: true})
	if err != nil {
		t.Fatal(err)
	}
	if st.Files != 2 || st.Verified != 2 || st.Bytes != int64(len(big))+5 {
		t.Fatalf("restore stats %+v", st)
	}
	got, err := os.ReadFile(filepath.Join(dst, bigPath))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, big) {
		t.Fatal("the large file's restored content differs")
	}
	fi, err := os.Stat(filepath.Join(dst, bigPath))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o640 || !fi.ModTime().Equal(mtime) {
		t.Fatalf("large file restored with mode %v mtime %v, want 0640 %v", fi.Mode().Perm(), fi.ModTime(), mtime)
	}

	// Cancelled at any point, a restore leaves the file whole or not at all.
	for _, d := range []time.Duration{0, time.Millisecond, 3 * time.Millisecond, 10 * time.Millisecond, 30 * time.Millisecond} {
		cctx, cancel := context.WithTimeout(ctx, d)
		dst := t.TempDir()
		_, err := snapshot.Restore(cctx, store, sn, snapshot.RestoreOptions{Target: dst})
		cancel()
		got, rerr := os.ReadFile(filepath.Join(dst, bigPath))
		switch {
		case err == nil && !bytes.Equal(got, big):
			t.Fatalf("cancelled after %v: restore succeeded but the large file differs (%v)", d, rerr)
		case rerr == nil && !bytes.Equal(got, big):
			t.Fatalf("cancelled after %v (%v): a partial large file was left behind", d, err)
		case rerr != nil && !errors.Is(rerr, os.ErrNotExist):
			t.Fatalf("cancelled after %v (%v): read the large file: %v", d, err, rerr)
		}
	}

	// Without the pack of its last blob, the file fails and is removed; the
	// other file is restored.
	n, err := snapshot.FindNode(ctx, store, sn, bigPath)
	if err != nil {
		t.Fatal(err)
	}
	if len(n.Content) < 3 {
		t.Fatalf("the large file has %d blobs; the test needs several parts", len(n.Content))
	}
	e, ok := store.Index().Lookup(repo.DataBlob, n.Content[len(n.Content)-1])
	if !ok {
		t.Fatal("last blob not in the index")
	}
	if err := store.Repo().Backend().Remove(ctx, repo.Handle{Type: repo.PackFile, Name: e.Pack.String()}); err != nil {
		t.Fatal(err)
	}
	dst2 := t.TempDir()
	st, err = snapshot.Restore(ctx, store, sn, snapshot.RestoreOptions{Target: dst2})
	if !errors.Is(err, snapshot.ErrRestoreIncomplete) || st.Errors != 1 {
		t.Fatalf("restore without a pack: err %v, stats %+v; want one failed entry", err, st)
	}
	if _, err := os.Lstat(filepath.Join(dst2, bigPath)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the failed large file was left behind (lstat: %v)", err)
	}
	if b, err := os.ReadFile(filepath.Join(dst2, src, "small")); err != nil || string(b) != "small" {
		t.Fatalf("the other file: %q, %v", b, err)
	}
}

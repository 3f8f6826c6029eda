package snapshot_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cairn-backup/cairn/crypto"
	"github.com/cairn-backup/cairn/index"
	"github.com/cairn-backup/cairn/pack"
	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/repo/mem"
	"github.com/cairn-backup/cairn/snapshot"
)

var testKDF = crypto.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}

// pruneFixture is a repository with a few backups of a changing tree, and
// what each snapshot's files hold.
type pruneFixture struct {
	be    *mem.Backend
	files map[repo.ID]map[string][]byte // snapshot -> path in it -> content
	snaps []*snapshot.Snapshot          // oldest first
}

// newPruneFixture backs up four versions of a tree: each changes some
// files, so the packs of the early backups end up partly used once their
// snapshots are gone.
func newPruneFixture(t *testing.T) *pruneFixture {
	t.Helper()
	ctx := context.Background()
	fx := &pruneFixture{be: mem.New(), files: map[repo.ID]map[string][]byte{}}
	r, err := repo.Init(ctx, fx.be, []byte("pw"), repo.InitOptions{KDF: testKDF})
	if err != nil {
		t.Fatal(err)
	}
	src := t.TempDir()
	rnd := rand.New(rand.NewSource(1))
	write := func(name string) {
		data := make([]byte, 2000+rnd.Intn(30000))
		rnd.Read(data)
		p := filepath.Join(src, "d"+name[len(name)-1:], name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	versions := [][]string{
		{"f0", "f1", "f2", "f3", "f4", "f5"},
		{"f1", "f2", "f6"},
		{"f3", "-f0"},
		{"f4"},
	}
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i, v := range versions {
		for _, name := range v {
			if gone, ok := strings.CutPrefix(name, "-"); ok {
				if err := os.Remove(filepath.Join(src, "d"+gone[len(gone)-1:], gone)); err != nil {
					t.Fatal(err)
				}
				continue
			}
			write(name)
		}
		idx, err := index.Load(ctx, r, index.Options{})
		if err != nil {
			t.Fatal(err)
		}
		sn, err := snapshot.Backup(ctx, pack.NewStore(r, idx), snapshot.BackupOptions{
			Paths: []string{src}, Hostname: "h", Time: start.Add(time.Duration(i) * time.Hour)})
		idx.Close()
		if err != nil {
			t.Fatal(err)
		}
		fx.snaps = append(fx.snaps, sn)
		fx.files[sn.ID] = readTree(t, src)
	}
	return fx
}

// readTree returns the files below root by their absolute paths.
func readTree(t *testing.T, root string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(p)
		out[p] = data
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// forget removes the snapshot files of snaps.
func (fx *pruneFixture) forget(t *testing.T, snaps ...*snapshot.Snapshot) {
	t.Helper()
	for _, sn := range snaps {
		if err := fx.be.Remove(context.Background(), repo.Handle{Type: repo.SnapshotFile, Name: sn.ID.String()}); err != nil {
			t.Fatal(err)
		}
		delete(fx.files, sn.ID)
	}
}

// cloneBackend copies every file of src into a new in-memory backend.
func cloneBackend(t *testing.T, src repo.Backend) *mem.Backend {
	t.Helper()
	ctx := context.Background()
	dst := mem.New()
	for _, ft := range []repo.FileType{repo.ConfigFile, repo.KeyFile, repo.PackFile, repo.IndexFile, repo.SnapshotFile, repo.LockFile} {
		err := src.List(ctx, ft, func(fi repo.FileInfo) error {
			h := repo.Handle{Type: ft, Name: fi.Name}
			data, err := repo.ReadAll(ctx, src, h)
			if err != nil {
				return err
			}
			return dst.Save(ctx, h, bytes.NewReader(data), int64(len(data)))
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

var errInjected = errors.New("injected failure")

// faultBackend fails the failAt-th change (Save or Remove) it is asked
// for: before making it, or, with after set, once it is made. Either way
// the caller stops there, as a crash would stop it.
type faultBackend struct {
	repo.Backend
	mu      sync.Mutex
	failAt  int // 0: never
	after   bool
	changes []string
}

func (b *faultBackend) change(op string, h repo.Handle, do func() error) error {
	b.mu.Lock()
	b.changes = append(b.changes, op+" "+h.String())
	fail := len(b.changes) == b.failAt
	b.mu.Unlock()
	if !fail {
		return do()
	}
	if b.after {
		if err := do(); err != nil {
			return err
		}
	}
	return fmt.Errorf("%s %s: %w", op, h, errInjected)
}

func (b *faultBackend) Save(ctx context.Context, h repo.Handle, r io.ReaderAt, size int64) error {
	return b.change("save", h, func() error { return b.Backend.Save(ctx, h, r, size) })
}

func (b *faultBackend) Remove(ctx context.Context, h repo.Handle) error {
	return b.change("remove", h, func() error { return b.Backend.Remove(ctx, h) })
}

// openPruneRepo opens be as cairn does: with a file cache and an index
// cache in cacheDir.
func openPruneRepo(t *testing.T, be repo.Backend, cacheDir string) *repo.Repo {
	t.Helper()
	r, err := repo.Open(context.Background(), be, []byte("pw"))
	if err != nil {
		t.Fatal(err)
	}
	r.SetCache(repo.NewFileCache(filepath.Join(cacheDir, "files")))
	return r
}

// prune runs a whole prune as the command does, writing index files of at
// most perFile blobs (0: the default).
func prune(ctx context.Context, r *repo.Repo, cacheDir string, perFile int) (*pack.PrunePlan, error) {
	idx, err := index.Load(ctx, r, index.Options{CacheDir: cacheDir})
	if err != nil {
		return nil, err
	}
	defer idx.Close()
	store := pack.NewStore(r, idx)
	snaps, err := snapshot.List(ctx, r, nil)
	if err != nil {
		return nil, err
	}
	used, err := snapshot.UsedBlobs(ctx, store, snaps)
	if err != nil {
		return nil, err
	}
	plan, err := store.PlanPrune(ctx, used, pack.PruneOptions{MaxUnused: 0, IndexFileBlobs: perFile})
	if err != nil {
		return nil, err
	}
	return plan, store.Prune(ctx, plan, nil)
}

// checkRepository fails the test unless r is sound, read through an index
// loaded with cacheDir ("" for none): every index entry lies inside a pack
// that is there, the snapshots are exactly those of fx, and every file of
// every snapshot reads back byte for byte.
func checkRepository(t *testing.T, r *repo.Repo, cacheDir string, fx *pruneFixture) {
	t.Helper()
	ctx := context.Background()
	idx, err := index.Load(ctx, r, index.Options{CacheDir: cacheDir})
	if err != nil {
		t.Fatalf("load index: %v", err)
	}
	defer idx.Close()
	sizes := map[repo.ID]int64{}
	if err := r.ListIDs(ctx, repo.PackFile, func(id repo.ID, size int64) error { sizes[id] = size; return nil }); err != nil {
		t.Fatal(err)
	}
	err = idx.Each(func(e repo.PackedBlob) error {
		size, ok := sizes[e.Pack]
		if !ok {
			return fmt.Errorf("%s blob %s is indexed in pack %s, which is gone", e.Type, e.ID.Short(), e.Pack.Short())
		}
		if int64(e.Offset)+int64(e.Length) > size {
			return fmt.Errorf("%s blob %s lies beyond the end of pack %s", e.Type, e.ID.Short(), e.Pack.Short())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	store := pack.NewStore(r, idx)
	snaps, err := snapshot.List(ctx, r, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(snaps) != len(fx.files) {
		t.Fatalf("%d snapshots, want %d", len(snaps), len(fx.files))
	}
	for _, sn := range snaps {
		want, ok := fx.files[sn.ID]
		if !ok {
			t.Fatalf("unexpected snapshot %s", sn.ID.Short())
		}
		seen := 0
		err := snapshot.Walk(ctx, store, sn.Tree, func(p string, n *snapshot.Node) error {
			if n.Type != snapshot.TypeFile {
				return nil
			}
			var buf bytes.Buffer
			if err := snapshot.WriteContent(ctx, store, n, &buf); err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
			if !bytes.Equal(buf.Bytes(), want[p]) {
				return fmt.Errorf("%s: content differs", p)
			}
			seen++
			return nil
		})
		if err != nil {
			t.Fatalf("snapshot %s: %v", sn.ID.Short(), err)
		}
		if seen != len(want) {
			t.Fatalf("snapshot %s: %d files, want %d", sn.ID.Short(), seen, len(want))
		}
	}
}

func TestUsedBlobs(t *testing.T) {
	ctx := context.Background()
	fx := newPruneFixture(t)
	counter := newLoadCounter(fx.be)
	r, err := repo.Open(ctx, counter, []byte("pw"))
	if err != nil {
		t.Fatal(err)
	}
	idx, err := index.Load(ctx, r, index.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer idx.Close()
	store := pack.NewStore(r, idx)

	// What a walk of each snapshot finds, by hand.
	want := pack.BlobSet{}
	for _, sn := range fx.snaps {
		want.Add(repo.TreeBlob, sn.Tree)
		err := snapshot.Walk(ctx, store, sn.Tree, func(_ string, n *snapshot.Node) error {
			for _, c := range n.Content {
				want.Add(repo.DataBlob, c)
			}
			if n.Subtree != nil {
				want.Add(repo.TreeBlob, *n.Subtree)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	trees := 0
	for k := range want {
		if k.Type == repo.TreeBlob {
			trees++
		}
	}
	counter.reset()
	used, err := snapshot.UsedBlobs(ctx, store, fx.snaps)
	if err != nil {
		t.Fatal(err)
	}
	if len(used) != len(want) {
		t.Fatalf("%d used blobs, want %d", len(used), len(want))
	}
	for k := range want {
		if !used.Has(k.Type, k.ID) {
			t.Fatalf("%s blob %s is missing from the used set", k.Type, k.ID.Short())
		}
	}
	// Trees shared by snapshots (the directories that did not change) are
	// read once.
	if n := counter.total(); n != trees {
		t.Fatalf("%d tree reads for %d distinct trees", n, trees)
	}

	// The later snapshots alone use less.
	later, err := snapshot.UsedBlobs(ctx, store, fx.snaps[2:])
	if err != nil {
		t.Fatal(err)
	}
	if len(later) >= len(used) {
		t.Fatalf("%d blobs used by the last two snapshots, %d by all", len(later), len(used))
	}
}

func TestUsedBlobsMissing(t *testing.T) {
	ctx := context.Background()
	r, err := repo.Init(ctx, mem.New(), []byte("pw"), repo.InitOptions{KDF: testKDF})
	if err != nil {
		t.Fatal(err)
	}
	idx, err := index.Load(ctx, r, index.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer idx.Close()
	store := pack.NewStore(r, idx)
	absent := repo.ID(r.Key().BlobID([]byte("never stored")))
	var sub, root repo.ID
	err = store.WithUploader(ctx, pack.Options{}, func(ctx context.Context) error {
		var err error
		sub, err = snapshot.SaveTree(ctx, store, &snapshot.Tree{Nodes: []*snapshot.Node{
			{Name: snapshot.Name("lost"), Type: snapshot.TypeFile, Content: []repo.ID{absent}},
		}})
		if err != nil {
			return err
		}
		root, err = snapshot.SaveTree(ctx, store, &snapshot.Tree{Nodes: []*snapshot.Node{
			{Name: snapshot.Name("dir"), Type: snapshot.TypeDir, Subtree: &sub},
		}})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	sn := &snapshot.Snapshot{Tree: root, ID: repo.ID{0xab, 0xcd}}
	_, err = snapshot.UsedBlobs(ctx, store, []*snapshot.Snapshot{sn})
	if !errors.Is(err, pack.ErrBlobNotFound) || !strings.Contains(err.Error(), absent.Short()) || !strings.Contains(err.Error(), "/dir/lost") {
		t.Fatalf("a data blob in no index: %v, want an error naming it and its file", err)
	}
	missingTree := repo.ID(r.Key().BlobID([]byte("no such tree")))
	sn.Tree = missingTree
	_, err = snapshot.UsedBlobs(ctx, store, []*snapshot.Snapshot{sn})
	if !errors.Is(err, pack.ErrBlobNotFound) || !strings.Contains(err.Error(), missingTree.Short()) {
		t.Fatalf("a missing tree: %v, want an error naming it", err)
	}
}

func TestPruneKeepsSnapshots(t *testing.T) {
	ctx := context.Background()
	fx := newPruneFixture(t)
	fx.forget(t, fx.snaps[0], fx.snaps[1])
	cacheDir := t.TempDir()
	r := openPruneRepo(t, fx.be, cacheDir)
	checkRepository(t, r, cacheDir, fx) // fills the cache with the old index
	var before int64
	if err := r.ListIDs(ctx, repo.PackFile, func(_ repo.ID, n int64) error { before += n; return nil }); err != nil {
		t.Fatal(err)
	}
	plan, err := prune(ctx, r, cacheDir, 0)
	if err != nil {
		t.Fatal(err)
	}
	st := plan.Stats
	if st.PacksDeleted == 0 || st.PacksRepacked == 0 || st.UnusedBlobs == 0 {
		t.Fatalf("stats %+v: want packs deleted and repacked", st)
	}
	var after int64
	if err := r.ListIDs(ctx, repo.PackFile, func(_ repo.ID, n int64) error { after += n; return nil }); err != nil {
		t.Fatal(err)
	}
	if after >= before || after != st.SizeAfter || before-after != st.BytesFreed() {
		t.Fatalf("packs took %d bytes, now %d; stats say %d freed", before, after, st.BytesFreed())
	}
	checkRepository(t, r, cacheDir, fx)
	checkRepository(t, r, "", fx)
	plan, err = prune(ctx, r, cacheDir, 0)
	if err != nil || !plan.Empty() {
		t.Fatalf("a second prune: %v, %+v", err, plan.Stats)
	}
}

// TestPruneCrash stops a prune at each change it makes to the repository
// (a failed save or remove, before or after it took effect) and checks
// that the repository is sound there, through a cache that knew the state
// before and through none, and that a second prune completes.
func TestPruneCrash(t *testing.T) {
	ctx := context.Background()
	fx := newPruneFixture(t)
	fx.forget(t, fx.snaps[0], fx.snaps[1])
	// A pack no index names, as an interrupted backup leaves.
	orphan := pack.NewWriter(repo.DataBlob, nil)
	r0 := openPruneRepo(t, fx.be, t.TempDir())
	blob := []byte("left by an interrupted backup")
	id := repo.ID(r0.Key().BlobID(blob))
	orphan.Add(id, r0.Key().Seal(nil, repo.Encode(nil, blob, repo.CompressOff), repo.BlobAD(repo.DataBlob, id)), len(blob))
	fp, err := orphan.Finish(r0.Key())
	if err != nil {
		t.Fatal(err)
	}
	if err := fx.be.Save(ctx, repo.Handle{Type: repo.PackFile, Name: fp.ID.String()}, fp.Data, fp.Size); err != nil {
		t.Fatal(err)
	}

	// A full run, to count the changes a prune makes.
	probe := &faultBackend{Backend: cloneBackend(t, fx.be)}
	// Index files of a few blobs each, so that the prune writes several.
	const perFile = 4
	if _, err := prune(ctx, openPruneRepo(t, probe, t.TempDir()), "", perFile); err != nil {
		t.Fatal(err)
	}
	steps := probe.changes
	var kinds []string
	for _, c := range steps {
		kinds = append(kinds, strings.SplitN(c, "/", 2)[0])
	}
	for _, want := range []string{"save data", "save index", "remove index", "remove data"} {
		if !slices.Contains(kinds, want) {
			t.Fatalf("the prune made no %q step: %v", want, steps)
		}
	}
	if n := strings.Count(strings.Join(kinds, ","), "save index"); n < 2 {
		t.Fatalf("the prune wrote %d index files, want several", n)
	}

	for _, after := range []bool{false, true} {
		for n := 1; n <= len(steps); n++ {
			name := fmt.Sprintf("fail %d of %d (%s), after=%v", n, len(steps), kinds[n-1], after)
			t.Run(name, func(t *testing.T) {
				fb := &faultBackend{Backend: cloneBackend(t, fx.be), failAt: n, after: after}
				cacheDir := t.TempDir()
				r := openPruneRepo(t, fb, cacheDir)
				checkRepository(t, r, cacheDir, fx) // the cache knows the state before
				_, err := prune(ctx, r, cacheDir, perFile)
				if !errors.Is(err, errInjected) {
					t.Fatalf("prune: %v, want the injected failure", err)
				}
				checkRepository(t, r, cacheDir, fx)
				checkRepository(t, r, "", fx)

				fb.failAt = 0
				if _, err := prune(ctx, r, cacheDir, perFile); err != nil {
					t.Fatalf("second prune: %v", err)
				}
				checkRepository(t, r, cacheDir, fx)
				checkRepository(t, r, "", fx)
				plan, err := prune(ctx, r, cacheDir, 0)
				if err != nil || !plan.Empty() {
					t.Fatalf("after a completed prune: %v, %+v", err, plan.Stats)
				}
				if _, err := fb.Stat(ctx, repo.Handle{Type: repo.PackFile, Name: fp.ID.String()}); !errors.Is(err, repo.ErrNotFound) {
					t.Fatalf("orphan pack: %v, want it deleted", err)
				}
			})
		}
	}
}

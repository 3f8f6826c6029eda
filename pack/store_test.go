package pack_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cairn-backup/cairn/crypto"
	"github.com/cairn-backup/cairn/index"
	"github.com/cairn-backup/cairn/pack"
	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/repo/mem"
)

func newRepo(t testing.TB, be repo.Backend) *repo.Repo {
	t.Helper()
	r, err := repo.Init(context.Background(), be, []byte("pw"), repo.InitOptions{KDF: crypto.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func newStore(t testing.TB, r *repo.Repo) *pack.Store {
	t.Helper()
	idx, err := index.Load(context.Background(), r, index.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { idx.Close() })
	return pack.NewStore(r, idx)
}

func count(t testing.TB, be repo.Backend, ft repo.FileType) int {
	t.Helper()
	n := 0
	if err := be.List(context.Background(), ft, func(repo.FileInfo) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

// packs returns the headers of every stored pack.
func packs(t testing.TB, r *repo.Repo) map[repo.ID][]repo.PackedBlob {
	t.Helper()
	ctx := context.Background()
	m := map[repo.ID][]repo.PackedBlob{}
	err := r.ListIDs(ctx, repo.PackFile, func(id repo.ID, _ int64) error {
		blobs, err := pack.ReadHeader(ctx, r.Backend(), r.Key(), id)
		m[id] = blobs
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

type savedBlob struct {
	t    repo.BlobType
	id   repo.ID
	data []byte
}

func saveAll(t testing.TB, s *pack.Store, blobs []savedBlob) []savedBlob {
	t.Helper()
	err := s.WithUploader(context.Background(), pack.Options{}, func(ctx context.Context) error {
		for i := range blobs {
			id, known, err := s.SaveBlob(ctx, blobs[i].t, blobs[i].data)
			if err != nil {
				return err
			}
			if known {
				return fmt.Errorf("blob %d reported as known", i)
			}
			blobs[i].id = id
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return blobs
}

func TestStoreSaveLoad(t *testing.T) {
	ctx := context.Background()
	r := newRepo(t, mem.New())
	s := newStore(t, r)
	var blobs []savedBlob
	for i, n := range []int{0, 1, 100, 4096, 1 << 20} {
		blobs = append(blobs, savedBlob{t: repo.DataBlob, data: random(int64(i), n)})
		blobs = append(blobs, savedBlob{t: repo.DataBlob, data: bytes.Repeat([]byte{byte(i)}, n+1)})
	}
	blobs = append(blobs, savedBlob{t: repo.TreeBlob, data: []byte(`{"nodes":[]}`)})
	blobs = saveAll(t, s, blobs)

	var raw int64
	for _, b := range blobs {
		if b.id != repo.ID(r.Key().BlobID(b.data)) {
			t.Fatalf("SaveBlob id is not the keyed hash of the data")
		}
		got, err := s.LoadBlob(ctx, b.t, b.id, nil)
		if err != nil {
			t.Fatalf("LoadBlob %s: %v", b.id.Short(), err)
		}
		if !bytes.Equal(got, b.data) {
			t.Fatalf("blob %s differs after a round trip", b.id.Short())
		}
		if b.t == repo.DataBlob {
			raw += int64(len(b.data))
		}
	}
	st := s.Stats()
	if st.Blobs[repo.DataBlob] != len(blobs)-1 || st.Blobs[repo.TreeBlob] != 1 || st.RawBytes[repo.DataBlob] != raw {
		t.Fatalf("stats %+v", st)
	}
	// Compressible blobs make the stored size smaller than the raw size.
	if st.PackedSize[repo.DataBlob] >= raw {
		t.Fatalf("stored %d bytes for %d raw bytes, half of them compressible", st.PackedSize[repo.DataBlob], raw)
	}
	if st.Packs != count(t, r.Backend(), repo.PackFile) {
		t.Fatalf("stats say %d packs, backend has %d", st.Packs, count(t, r.Backend(), repo.PackFile))
	}

	// Through a fresh index, as the next process sees it.
	s2 := newStore(t, r)
	for _, b := range blobs {
		if got, err := s2.LoadBlob(ctx, b.t, b.id, nil); err != nil || !bytes.Equal(got, b.data) {
			t.Fatalf("blob %s through a reloaded index: %v", b.id.Short(), err)
		}
	}
	// The buffer is reused.
	buf := make([]byte, 0, 2<<20)
	got, err := s2.LoadBlob(ctx, blobs[8].t, blobs[8].id, buf)
	if err != nil || &got[0] != &buf[:1][0] {
		t.Fatalf("LoadBlob did not use the buffer given: %v", err)
	}
}

func TestStoreLoadErrors(t *testing.T) {
	ctx := context.Background()
	r := newRepo(t, mem.New())
	s := newStore(t, r)
	blobs := saveAll(t, s, []savedBlob{{t: repo.DataBlob, data: random(1, 1000)}, {t: repo.DataBlob, data: random(2, 1000)}})
	if _, err := s.LoadBlob(ctx, repo.DataBlob, repo.ID{1}, nil); !errors.Is(err, pack.ErrBlobNotFound) {
		t.Fatalf("unknown blob: %v, want ErrBlobNotFound", err)
	}
	// A data blob is not a tree blob with the same ID.
	if _, err := s.LoadBlob(ctx, repo.TreeBlob, blobs[0].id, nil); !errors.Is(err, pack.ErrBlobNotFound) {
		t.Fatalf("data blob loaded as a tree: %v, want ErrBlobNotFound", err)
	}
	// Damage the first blob in its pack: it fails, its neighbour does not.
	e, ok := s.Index().Lookup(repo.DataBlob, blobs[0].id)
	if !ok {
		t.Fatal("saved blob not in the index")
	}
	h := repo.Handle{Type: repo.PackFile, Name: e.Pack.String()}
	data, err := repo.ReadAll(ctx, r.Backend(), h)
	if err != nil {
		t.Fatal(err)
	}
	data[e.Offset+e.Length/2] ^= 1
	if err := r.Backend().Save(ctx, h, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	if _, err := s.LoadBlob(ctx, repo.DataBlob, blobs[0].id, nil); !errors.Is(err, crypto.ErrAuth) {
		t.Fatalf("damaged blob: %v, want ErrAuth", err)
	}
	if got, err := s.LoadBlob(ctx, repo.DataBlob, blobs[1].id, nil); err != nil || !bytes.Equal(got, blobs[1].data) {
		t.Fatalf("undamaged neighbour: %v", err)
	}
	// A missing pack.
	if err := r.Backend().Remove(ctx, h); err != nil {
		t.Fatal(err)
	}
	if _, err := s.LoadBlob(ctx, repo.DataBlob, blobs[1].id, nil); !errors.Is(err, repo.ErrNotFound) {
		t.Fatalf("blob of a missing pack: %v, want ErrNotFound", err)
	}
}

func TestStoreDedup(t *testing.T) {
	ctx := context.Background()
	r := newRepo(t, mem.New())
	s := newStore(t, r)
	data := random(1, 5000)
	var first repo.ID
	err := s.WithUploader(ctx, pack.Options{}, func(ctx context.Context) error {
		id, known, err := s.SaveBlob(ctx, repo.DataBlob, data)
		if err != nil || known {
			return fmt.Errorf("first save: known %v, %v", known, err)
		}
		first = id
		// Again before its pack is stored.
		id, known, err = s.SaveBlob(ctx, repo.DataBlob, bytes.Clone(data))
		if err != nil || !known || id != first {
			return fmt.Errorf("second save: known %v, %v", known, err)
		}
		// The same bytes as a tree are another blob.
		if _, known, err = s.SaveBlob(ctx, repo.TreeBlob, data); err != nil || known {
			return fmt.Errorf("same bytes as a tree: known %v, %v", known, err)
		}
		// Many goroutines race with new content: exactly one stores it.
		var fresh atomic.Int32
		var wg sync.WaitGroup
		racer := random(2, 3000)
		for range 8 {
			wg.Go(func() {
				if _, known, err := s.SaveBlob(ctx, repo.DataBlob, racer); err == nil && !known {
					fresh.Add(1)
				}
			})
		}
		wg.Wait()
		if fresh.Load() != 1 {
			return fmt.Errorf("%d concurrent savers stored the same blob, want 1", fresh.Load())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	st := s.Stats()
	if st.Blobs[repo.DataBlob] != 2 || st.Blobs[repo.TreeBlob] != 1 {
		t.Fatalf("stats %+v, want 2 data blobs and 1 tree blob", st)
	}
	nPacks, nIndex := count(t, r.Backend(), repo.PackFile), count(t, r.Backend(), repo.IndexFile)
	for _, bs := range packs(t, r) {
		seen := map[repo.ID]bool{}
		for _, b := range bs {
			if seen[b.ID] {
				t.Fatalf("blob %s stored twice in one pack", b.ID.Short())
			}
			seen[b.ID] = true
		}
	}

	// A second run with the same store, and a run with a fresh store and
	// index, as the next backup: nothing new is written.
	for i, s := range []*pack.Store{s, newStore(t, r)} {
		err = s.WithUploader(ctx, pack.Options{}, func(ctx context.Context) error {
			id, known, err := s.SaveBlob(ctx, repo.DataBlob, data)
			if err != nil || !known || id != first {
				return fmt.Errorf("known %v, %v", known, err)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("run %d: %v", i+2, err)
		}
		if p, x := count(t, r.Backend(), repo.PackFile), count(t, r.Backend(), repo.IndexFile); p != nPacks || x != nIndex {
			t.Fatalf("run %d wrote %d packs and %d index files for known data", i+2, p-nPacks, x-nIndex)
		}
	}
}

func TestStoreSeparatesTypes(t *testing.T) {
	r := newRepo(t, mem.New())
	s := newStore(t, r)
	var blobs []savedBlob
	for i := range 10 {
		blobs = append(blobs, savedBlob{t: repo.BlobType(i % 2), data: random(int64(i), 100+i)})
	}
	saveAll(t, s, blobs)
	types := map[repo.BlobType]int{}
	for id, bs := range packs(t, r) {
		if len(bs) == 0 {
			t.Fatalf("pack %s is empty", id.Short())
		}
		for _, b := range bs {
			if b.Type != bs[0].Type {
				t.Fatalf("pack %s mixes %s and %s blobs", id.Short(), bs[0].Type, b.Type)
			}
		}
		types[bs[0].Type]++
	}
	if types[repo.DataBlob] != 1 || types[repo.TreeBlob] != 1 {
		t.Fatalf("packs per type: %v, want one each", types)
	}
}

// Blobs saved in different lanes, alternately, end in a pack per lane, each
// in the order they were saved: what a restore reading one lane's stream finds.
func TestStoreLanes(t *testing.T) {
	ctx := context.Background()
	r := newRepo(t, mem.New())
	s := newStore(t, r)
	const lanes = 3
	var order [lanes][]repo.ID
	err := s.WithUploader(ctx, pack.Options{}, func(ctx context.Context) error {
		for i := range 30 {
			lane := i % lanes
			id, _, err := s.SaveBlobIn(ctx, lane, repo.DataBlob, random(int64(i), 1000+i))
			if err != nil {
				return err
			}
			order[lane] = append(order[lane], id)
			if _, _, err := s.SaveBlobIn(ctx, lane, repo.TreeBlob, random(int64(100+i), 50)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var data [][]repo.ID
	trees := 0
	for _, bs := range packs(t, r) {
		if bs[0].Type == repo.TreeBlob {
			trees++
			continue
		}
		ids := make([]repo.ID, len(bs))
		for i, b := range bs {
			ids[i] = b.ID
		}
		data = append(data, ids)
	}
	if trees != lanes || len(data) != lanes {
		t.Fatalf("%d tree and %d data packs, want %d of each", trees, len(data), lanes)
	}
	for _, ids := range data {
		if !slices.ContainsFunc(order[:], func(want []repo.ID) bool { return slices.Equal(ids, want) }) {
			t.Errorf("a data pack holds %d blobs that are not one lane's, in order", len(ids))
		}
	}
}

// TestStoreManyPacks fills more than one pack from several goroutines.
func TestStoreManyPacks(t *testing.T) {
	ctx := context.Background()
	r := newRepo(t, mem.New())
	s := newStore(t, r)
	const workers, perWorker, size = 4, 24, 256 << 10 // 24 MiB: more than a pack
	ids := make([][]repo.ID, workers)
	err := s.WithUploader(ctx, pack.Options{Uploaders: 3}, func(ctx context.Context) error {
		var wg sync.WaitGroup
		errs := make(chan error, workers)
		for w := range workers {
			wg.Go(func() {
				for i := range perWorker {
					id, known, err := s.SaveBlob(ctx, repo.DataBlob, random(int64(w*1000+i), size))
					if err != nil || known {
						errs <- fmt.Errorf("worker %d blob %d: known %v, %v", w, i, known, err)
						return
					}
					ids[w] = append(ids[w], id)
				}
			})
		}
		wg.Wait()
		close(errs)
		return <-errs
	})
	if err != nil {
		t.Fatal(err)
	}
	ps := packs(t, r)
	if len(ps) < 2 {
		t.Fatalf("%d MiB stored in %d pack(s)", workers*perWorker*size>>20, len(ps))
	}
	n := 0
	for _, bs := range ps {
		n += len(bs)
	}
	if n != workers*perWorker {
		t.Fatalf("packs hold %d blobs, want %d", n, workers*perWorker)
	}
	for w := range workers {
		for i, id := range ids[w] {
			got, err := s.LoadBlob(ctx, repo.DataBlob, id, nil)
			if err != nil || !bytes.Equal(got, random(int64(w*1000+i), size)) {
				t.Fatalf("worker %d blob %d: %v", w, i, err)
			}
		}
	}
}

func TestStoreDryRun(t *testing.T) {
	ctx := context.Background()
	r := newRepo(t, mem.New())
	s := newStore(t, r)
	known := saveAll(t, s, []savedBlob{{t: repo.DataBlob, data: random(1, 100)}})[0]
	nPacks, nIndex := count(t, r.Backend(), repo.PackFile), count(t, r.Backend(), repo.IndexFile)

	s = newStore(t, r)
	s.SetDryRun(true)
	data := random(2, 1<<20)
	err := s.WithUploader(ctx, pack.Options{}, func(ctx context.Context) error {
		for i := range 3 {
			_, k, err := s.SaveBlob(ctx, repo.DataBlob, data)
			if err != nil || k != (i > 0) {
				return fmt.Errorf("save %d: known %v, %v", i, k, err)
			}
		}
		if _, k, err := s.SaveBlob(ctx, repo.DataBlob, known.data); err != nil || !k {
			return fmt.Errorf("stored blob: known %v, %v", k, err)
		}
		_, _, err := s.SaveBlob(ctx, repo.TreeBlob, []byte(`{"nodes":[]}`))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	st := s.Stats()
	if st.Blobs[repo.DataBlob] != 1 || st.Blobs[repo.TreeBlob] != 1 || st.RawBytes[repo.DataBlob] != int64(len(data)) || st.Packs != 0 {
		t.Fatalf("dry-run stats %+v", st)
	}
	if p, x := count(t, r.Backend(), repo.PackFile), count(t, r.Backend(), repo.IndexFile); p != nPacks || x != nIndex {
		t.Fatalf("dry run wrote %d packs and %d index files", p-nPacks, x-nIndex)
	}
	if _, err := s.LoadBlob(ctx, repo.DataBlob, repo.ID(r.Key().BlobID(data)), nil); !errors.Is(err, pack.ErrBlobNotFound) {
		t.Fatalf("dry-run blob is loadable: %v", err)
	}
}

// failingBackend fails pack saves while fail is set.
type failingBackend struct {
	repo.Backend
	fail atomic.Bool
}

var errUpload = errors.New("upload failed")

func (b *failingBackend) Save(ctx context.Context, h repo.Handle, r io.ReaderAt, size int64) error {
	if h.Type == repo.PackFile && b.fail.Load() {
		return errUpload
	}
	return b.Backend.Save(ctx, h, r, size)
}

// TestStoreUploadFailure: a failed upload is reported, and the blobs it
// held are not taken as stored afterwards.
func TestStoreUploadFailure(t *testing.T) {
	ctx := context.Background()
	be := &failingBackend{Backend: mem.New()}
	r := newRepo(t, be)
	s := newStore(t, r)
	data := random(1, 1000)
	be.fail.Store(true)
	err := s.WithUploader(ctx, pack.Options{}, func(ctx context.Context) error {
		_, _, err := s.SaveBlob(ctx, repo.DataBlob, data)
		return err
	})
	if !errors.Is(err, errUpload) {
		t.Fatalf("WithUploader: %v, want the upload error", err)
	}
	if n := count(t, be, repo.PackFile); n != 0 {
		t.Fatalf("%d packs stored", n)
	}
	be.fail.Store(false)
	err = s.WithUploader(ctx, pack.Options{}, func(ctx context.Context) error {
		_, known, err := s.SaveBlob(ctx, repo.DataBlob, data)
		if err == nil && known {
			err = errors.New("a blob whose upload failed is reported as known")
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := s.LoadBlob(ctx, repo.DataBlob, repo.ID(r.Key().BlobID(data)), nil); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("blob after a retried run: %v", err)
	}
}

func TestStoreFnError(t *testing.T) {
	ctx := context.Background()
	r := newRepo(t, mem.New())
	s := newStore(t, r)
	errStop := errors.New("stop")
	err := s.WithUploader(ctx, pack.Options{}, func(ctx context.Context) error {
		if _, _, err := s.SaveBlob(ctx, repo.DataBlob, []byte(strings.Repeat("x", 100))); err != nil {
			return err
		}
		return errStop
	})
	if !errors.Is(err, errStop) {
		t.Fatalf("WithUploader: %v, want fn's error", err)
	}
}

package pack_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/cairn-backup/cairn/index"
	"github.com/cairn-backup/cairn/pack"
	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/repo/mem"
)

// rebuildFixture stores blobs in three sessions (one data pack each, and a
// tree pack in the last) and returns them with the index that knows them.
func rebuildFixture(t *testing.T) (*mem.Backend, *repo.Repo, []savedBlob) {
	t.Helper()
	be := mem.New()
	r := newRepo(t, be)
	var all []savedBlob
	for s := range 3 {
		var blobs []savedBlob
		for i := range 4 {
			blobs = append(blobs, savedBlob{t: repo.DataBlob, data: random(int64(10*s+i), 500+300*i)})
		}
		if s == 2 {
			blobs = append(blobs, savedBlob{t: repo.TreeBlob, data: []byte(`{"nodes":[]}`)})
		}
		all = append(all, saveAll(t, newStore(t, r), blobs)...)
	}
	return be, r, all
}

// loadable fails the test unless every blob of want loads, with its
// content, through r's index, and reports how many of lost do.
func loadable(t *testing.T, r *repo.Repo, want, lost []savedBlob) int {
	t.Helper()
	ctx := context.Background()
	s := newStore(t, r)
	for _, b := range want {
		got, err := s.LoadBlob(ctx, b.t, b.id, nil)
		if err != nil || !bytes.Equal(got, b.data) {
			t.Fatalf("blob %s: %v", b.id.Short(), err)
		}
	}
	n := 0
	for _, b := range lost {
		if s.Index().Has(b.t, b.id) {
			n++
		}
	}
	return n
}

func packOf(t *testing.T, r *repo.Repo, b savedBlob) repo.ID {
	t.Helper()
	s := newStore(t, r)
	e, ok := s.Index().Lookup(b.t, b.id)
	if !ok {
		t.Fatalf("blob %s not indexed", b.id.Short())
	}
	return e.Pack
}

func indexFiles(t *testing.T, r *repo.Repo) []repo.ID {
	t.Helper()
	var ids []repo.ID
	if err := r.ListIDs(context.Background(), repo.IndexFile, func(id repo.ID, _ int64) error {
		ids = append(ids, id)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return ids
}

func editFile(t *testing.T, be repo.Backend, h repo.Handle, edit func([]byte) []byte) {
	t.Helper()
	ctx := context.Background()
	b, err := repo.ReadAll(ctx, be, h)
	if err != nil {
		t.Fatal(err)
	}
	b = edit(b)
	if err := be.Save(ctx, h, bytes.NewReader(b), int64(len(b))); err != nil {
		t.Fatal(err)
	}
}

func packH(id repo.ID) repo.Handle { return repo.Handle{Type: repo.PackFile, Name: id.String()} }

func TestRebuildIndexFromHeaders(t *testing.T) {
	be, r, blobs := rebuildFixture(t)
	ctx := context.Background()
	old := indexFiles(t, r)
	// One index file is lost: its packs are found again by their headers.
	lost, err := index.LoadFile(ctx, r, old[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := be.Remove(ctx, repo.Handle{Type: repo.IndexFile, Name: old[0].String()}); err != nil {
		t.Fatal(err)
	}
	res, err := pack.RebuildIndex(ctx, r, pack.RebuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Packs != 4 || res.Blobs != len(blobs) || res.Added != len(lost.Packs) || res.Dropped != 0 || res.OldIndexes != 2 || res.NewIndexes != 1 {
		t.Fatalf("result %+v", res)
	}
	now := indexFiles(t, r)
	if len(now) != 1 || slices.Contains(old, now[0]) {
		t.Fatalf("index files %v after the rebuild (before: %v)", now, old)
	}
	f, err := index.LoadFile(ctx, r, now[0])
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(f.Supersedes, old[1:]) {
		t.Fatalf("the new index supersedes %v, want %v", f.Supersedes, old[1:])
	}
	loadable(t, r, blobs, nil)
}

func TestRebuildIndexLeavesOutDamagedHeader(t *testing.T) {
	be, r, blobs := rebuildFixture(t)
	ctx := context.Background()
	bad := packOf(t, r, blobs[0])
	editFile(t, be, packH(bad), func(b []byte) []byte { b[len(b)-10] ^= 1; return b })
	var reports []string
	res, err := pack.RebuildIndex(ctx, r, pack.RebuildOptions{Report: func(m string) { reports = append(reports, m) }})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.LeftOut, []repo.ID{bad}) || res.Dropped != 1 || res.Packs != 3 {
		t.Fatalf("result %+v", res)
	}
	if len(reports) != 1 || !strings.Contains(reports[0], bad.Short()) {
		t.Fatalf("reports %q", reports)
	}
	if n := loadable(t, r, blobs[4:], blobs[:4]); n != 0 {
		t.Fatalf("%d blobs of the left-out pack are still indexed", n)
	}
	if _, err := be.Stat(ctx, packH(bad)); err != nil {
		t.Fatalf("the left-out pack was removed: %v", err)
	}
}

func TestRebuildIndexSalvagesDamagedPack(t *testing.T) {
	be, r, blobs := rebuildFixture(t)
	ctx := context.Background()
	bad := packOf(t, r, blobs[5])
	// Damage the second blob of that pack (blobs 4-7 are in it, in order).
	e, _ := newStore(t, r).Index().Lookup(repo.DataBlob, blobs[5].id)
	editFile(t, be, packH(bad), func(b []byte) []byte { b[e.Offset+20] ^= 1; return b })

	// Headers alone see nothing wrong.
	res, err := pack.RebuildIndex(ctx, r, pack.RebuildOptions{})
	if err != nil || res.Packs != 4 || len(res.LeftOut)+len(res.Removed) != 0 {
		t.Fatalf("without reading data: %+v, %v", res, err)
	}
	var reports []string
	var mu sync.Mutex
	res, err = pack.RebuildIndex(ctx, r, pack.RebuildOptions{ReadData: true, Connections: 2,
		Report: func(m string) { mu.Lock(); reports = append(reports, m); mu.Unlock() }})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.Removed, []repo.ID{bad}) || res.BlobsLost != 1 || res.NewPacks != 1 || res.Packs != 4 || res.Dropped != 0 {
		t.Fatalf("result %+v", res)
	}
	if n := loadable(t, r, append(slices.Clone(blobs[:5]), blobs[6:]...), blobs[5:6]); n != 0 {
		t.Fatal("the damaged blob is still indexed")
	}
	if _, err := be.Stat(ctx, packH(bad)); !errors.Is(err, repo.ErrNotFound) {
		t.Fatalf("the damaged pack is still there: %v", err)
	}
	if !slices.ContainsFunc(reports, func(m string) bool { return strings.Contains(m, blobs[5].id.Short()) && strings.Contains(m, "lost") }) {
		t.Fatalf("the lost blob is not reported: %q", reports)
	}
	// All is well now.
	res, err = pack.RebuildIndex(ctx, r, pack.RebuildOptions{ReadData: true})
	if err != nil || len(res.Removed) != 0 || res.BlobsLost != 0 || res.Packs != 4 {
		t.Fatalf("second rebuild: %+v, %v", res, err)
	}
}

// TestRebuildIndexSalvagesByOldIndex: a pack whose header is damaged still
// gives up its blobs, found where the old index says they are.
func TestRebuildIndexSalvagesByOldIndex(t *testing.T) {
	be, r, blobs := rebuildFixture(t)
	ctx := context.Background()
	bad := packOf(t, r, blobs[0])
	editFile(t, be, packH(bad), func(b []byte) []byte { b[len(b)-10] ^= 1; return b })
	res, err := pack.RebuildIndex(ctx, r, pack.RebuildOptions{ReadData: true})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.Removed, []repo.ID{bad}) || res.BlobsLost != 0 || len(res.LeftOut) != 0 || res.Packs != 4 {
		t.Fatalf("result %+v", res)
	}
	loadable(t, r, blobs, nil)
}

// TestRebuildIndexStopsOnReadErrors: a pack that cannot be read now may
// well be intact; nothing is changed.
func TestRebuildIndexStopsOnReadErrors(t *testing.T) {
	be, r, blobs := rebuildFixture(t)
	old := indexFiles(t, r)
	fb := &failLoads{Backend: be, fail: packOf(t, r, blobs[0]).String()}
	r2, err := repo.Open(context.Background(), fb, []byte("pw"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pack.RebuildIndex(context.Background(), r2, pack.RebuildOptions{}); err == nil {
		t.Fatal("RebuildIndex succeeded with a pack it could not read")
	}
	if now := indexFiles(t, r); !slices.Equal(now, old) {
		t.Fatalf("index files changed: %v, were %v", now, old)
	}
}

type failLoads struct {
	*mem.Backend
	fail string
}

func (b *failLoads) Load(ctx context.Context, h repo.Handle, off, n int64, fn func(io.Reader) error) error {
	if h.Name == b.fail {
		return errors.New("connection reset")
	}
	return b.Backend.Load(ctx, h, off, n, fn)
}

// retryLoads hands fn a stream that breaks half-way first, then the whole
// file, as the retry layer does after a dropped connection.
type retryLoads struct{ *mem.Backend }

var errCut = errors.New("connection cut")

type cutReader struct {
	r    io.Reader
	left int
}

func (c *cutReader) Read(p []byte) (int, error) {
	if c.left <= 0 {
		return 0, errCut
	}
	if len(p) > c.left {
		p = p[:c.left]
	}
	n, err := c.r.Read(p)
	c.left -= n
	return n, err
}

func (b retryLoads) Load(ctx context.Context, h repo.Handle, off, n int64, fn func(io.Reader) error) error {
	data, err := repo.ReadAll(ctx, b.Backend, h)
	if err != nil {
		return err
	}
	if err := fn(&cutReader{r: bytes.NewReader(data), left: len(data) / 2}); !errors.Is(err, errCut) {
		return err
	}
	return fn(bytes.NewReader(data))
}

func TestReadPack(t *testing.T) {
	key := fixedKey(t)
	ctx := context.Background()
	p := buildPack(t, key, repo.DataBlob, []int{3000, 10, 4000, 2000})
	be := mem.New()
	id := store(t, be, p.data)
	read := func(be repo.Backend, id repo.ID, blobs []repo.PackedBlob) (pack.Content, []repo.ID, []error) {
		t.Helper()
		var ok []repo.ID
		var bad []error
		c, err := pack.ReadPack(ctx, be, key, id, blobs, func(b repo.PackedBlob, sealed []byte, err error) error {
			if err != nil {
				bad = append(bad, err)
				return nil
			}
			plain, err := pack.OpenBlob(key, b, sealed, nil)
			if err != nil {
				t.Fatalf("blob %s handed out as intact: %v", b.ID.Short(), err)
			}
			_ = plain
			ok = append(ok, b.ID)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return c, ok, bad
	}
	ids := func(blobs []repo.PackedBlob) []repo.ID {
		var out []repo.ID
		for _, b := range blobs {
			out = append(out, b.ID)
		}
		return out
	}

	c, ok, bad := read(be, id, p.blobs)
	if c.Hash != id || c.Size != int64(len(p.data)) || c.HeaderErr != nil || len(c.Header) != 4 || len(bad) != 0 || !slices.Equal(ok, ids(p.blobs)) {
		t.Fatalf("intact pack: %+v, ok %v, bad %v", c, ok, bad)
	}
	// A stream that breaks and is retried: each blob is heard of once.
	c, ok, bad = read(retryLoads{be}, id, p.blobs)
	if c.Hash != id || len(bad) != 0 || !slices.Equal(ok, ids(p.blobs)) {
		t.Fatalf("retried read: %+v, ok %v, bad %v", c, ok, bad)
	}

	// One damaged byte in blob 2: only it fails, and the pack's hash.
	damaged := bytes.Clone(p.data)
	damaged[p.blobs[2].Offset+5] ^= 1
	dbe := mem.New()
	if err := dbe.Save(ctx, packH(id), bytes.NewReader(damaged), int64(len(damaged))); err != nil {
		t.Fatal(err)
	}
	c, ok, bad = read(dbe, id, p.blobs)
	if c.Hash == id || c.HeaderErr != nil || len(bad) != 1 || !strings.Contains(bad[0].Error(), p.blobs[2].ID.Short()) || !strings.Contains(bad[0].Error(), id.Short()) || len(ok) != 3 {
		t.Fatalf("damaged pack: hash ok %v, ok %v, bad %v", c.Hash == id, ok, bad)
	}

	// A truncated pack: the blobs beyond its end fail; nothing hangs in retries.
	short := p.data[:p.blobs[2].Offset+10]
	sid := store(t, be, short)
	c, ok, bad = read(be, sid, p.blobs)
	if c.HeaderErr == nil || len(ok) != 2 || len(bad) != 2 || !strings.Contains(bad[1].Error(), "beyond the end") {
		t.Fatalf("truncated pack: header err %v, ok %v, bad %v", c.HeaderErr, ok, bad)
	}

	// A missing pack is an error of the read itself.
	if _, err := pack.ReadPack(ctx, be, key, repo.ID{1}, p.blobs, func(repo.PackedBlob, []byte, error) error { return nil }); !errors.Is(err, repo.ErrNotFound) {
		t.Fatalf("missing pack: %v", err)
	}
	// fn's error stops the read.
	stop := errors.New("stop")
	if _, err := pack.ReadPack(ctx, be, key, id, p.blobs, func(repo.PackedBlob, []byte, error) error { return stop }); !errors.Is(err, stop) {
		t.Fatalf("fn's error: %v", err)
	}
}

func TestLoadHeader(t *testing.T) {
	key := fixedKey(t)
	ctx := context.Background()
	p := buildPack(t, key, repo.TreeBlob, []int{100, 200})
	be := mem.New()
	id := store(t, be, p.data)
	got, err := pack.LoadHeader(ctx, be, key, id, int64(len(p.data)))
	if err != nil || len(got) != 2 || got[1].Pack != id || got[1].Offset != p.blobs[1].Offset {
		t.Fatalf("LoadHeader: %+v, %v", got, err)
	}
	var de *pack.DamageError
	bad := bytes.Clone(p.data)
	bad[len(bad)-8] ^= 1
	bid := store(t, be, bad)
	if _, err := pack.LoadHeader(ctx, be, key, bid, int64(len(bad))); !errors.As(err, &de) || de.Pack != bid {
		t.Fatalf("damaged header: %v, want a DamageError", err)
	}
	if _, err := pack.LoadHeader(ctx, &failLoads{Backend: be, fail: id.String()}, key, id, int64(len(p.data))); err == nil || errors.As(err, &de) {
		t.Fatalf("failed read: %v, want an error that is not a DamageError", err)
	}
}

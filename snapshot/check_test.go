package snapshot_test

import (
	"bytes"
	"context"
	"math/rand"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cairn-backup/cairn/crypto"
	"github.com/cairn-backup/cairn/index"
	"github.com/cairn-backup/cairn/pack"
	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/repo/mem"
	"github.com/cairn-backup/cairn/snapshot"
)

// checkRepo is a small repository on a mem backend, its packs laid out so
// that damage to one of them hits known files:
//
//	/a, /b        data in pack dataAB
//	/sub/c, /sub/d data in pack dataCD
//	tree of /sub  in pack subTree
//	root tree     in pack rootTree
type checkRepo struct {
	be       *mem.Backend
	r        *repo.Repo
	files    map[string][]byte
	sn       *snapshot.Snapshot
	dataAB   repo.ID
	dataCD   repo.ID
	subTree  repo.ID
	rootTree repo.ID
}

func newCheckRepo(t *testing.T) *checkRepo {
	t.Helper()
	ctx := context.Background()
	be := mem.New()
	r, err := repo.Init(ctx, be, []byte("pw"), repo.InitOptions{KDF: crypto.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}})
	if err != nil {
		t.Fatal(err)
	}
	cr := &checkRepo{be: be, r: r, files: map[string][]byte{}}
	store := openStore(t, r)
	rnd := rand.New(rand.NewSource(1))
	content := func(name string, chunks int) []repo.ID {
		var ids []repo.ID
		for range chunks {
			b := make([]byte, 1000+rnd.Intn(3000))
			rnd.Read(b)
			id, _, err := store.SaveBlob(ctx, repo.DataBlob, b)
			if err != nil {
				t.Fatal(err)
			}
			cr.files[name] = append(cr.files[name], b...)
			ids = append(ids, id)
		}
		return ids
	}
	file := func(name string, content []repo.ID) *snapshot.Node {
		return &snapshot.Node{Name: snapshot.Name(name), Type: snapshot.TypeFile, Mode: 0o644,
			Size: uint64(len(cr.files["/"+name]) + len(cr.files["/sub/"+name])), Content: content}
	}
	// Each WithUploader stores its partial packs at the end: one session,
	// one pack per blob type.
	session := func(fn func(ctx context.Context) error) {
		t.Helper()
		if err := store.WithUploader(ctx, pack.Options{}, fn); err != nil {
			t.Fatal(err)
		}
	}
	var a, b, c, d []repo.ID
	session(func(ctx context.Context) error { a, b = content("/a", 2), content("/b", 1); return nil })
	session(func(ctx context.Context) error { c, d = content("/sub/c", 3), content("/sub/d", 1); return nil })
	var sub, root repo.ID
	session(func(ctx context.Context) error {
		var err error
		sub, err = snapshot.SaveTree(ctx, store, &snapshot.Tree{Nodes: []*snapshot.Node{file("c", c), file("d", d)}})
		return err
	})
	session(func(ctx context.Context) error {
		var err error
		root, err = snapshot.SaveTree(ctx, store, &snapshot.Tree{Nodes: []*snapshot.Node{
			file("a", a), file("b", b),
			{Name: snapshot.Name("sub"), Type: snapshot.TypeDir, Mode: 0o755, Subtree: &sub},
		}})
		return err
	})
	idx := store.Index()
	packOf := func(t repo.BlobType, id repo.ID) repo.ID {
		e, ok := idx.Lookup(t, id)
		if !ok {
			panic("blob not indexed")
		}
		return e.Pack
	}
	cr.dataAB, cr.dataCD = packOf(repo.DataBlob, a[0]), packOf(repo.DataBlob, c[0])
	cr.subTree, cr.rootTree = packOf(repo.TreeBlob, sub), packOf(repo.TreeBlob, root)
	if len(map[repo.ID]bool{cr.dataAB: true, cr.dataCD: true, cr.subTree: true, cr.rootTree: true}) != 4 {
		t.Fatal("the fixture's blobs did not land in four packs")
	}
	cr.sn = &snapshot.Snapshot{Time: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC), Tree: root,
		Paths: []string{"/"}, Hostname: "h", Tags: []string{"daily"}}
	if _, err := snapshot.Save(ctx, r, cr.sn); err != nil {
		t.Fatal(err)
	}
	return cr
}

// openStore loads r's index (in memory) and returns a store on it.
func openStore(t *testing.T, r *repo.Repo) *pack.Store {
	t.Helper()
	idx, err := index.Load(context.Background(), r, index.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { idx.Close() })
	return pack.NewStore(r, idx)
}

func packHandle(id repo.ID) repo.Handle { return repo.Handle{Type: repo.PackFile, Name: id.String()} }

// flipByte changes one byte of a stored file in place.
func (cr *checkRepo) flipByte(t *testing.T, h repo.Handle, off int) {
	t.Helper()
	ctx := context.Background()
	b, err := repo.ReadAll(ctx, cr.be, h)
	if err != nil {
		t.Fatal(err)
	}
	if off < 0 {
		off += len(b)
	}
	b[off] ^= 0x40
	if err := cr.be.Save(ctx, h, bytes.NewReader(b), int64(len(b))); err != nil {
		t.Fatal(err)
	}
}

func (cr *checkRepo) remove(t *testing.T, h repo.Handle) {
	t.Helper()
	if err := cr.be.Remove(context.Background(), h); err != nil {
		t.Fatal(err)
	}
}

// indexFileOf returns the index file that names pack.
func (cr *checkRepo) indexFileOf(t *testing.T, p repo.ID) repo.ID {
	t.Helper()
	ctx := context.Background()
	var found []repo.ID
	err := cr.r.ListIDs(ctx, repo.IndexFile, func(id repo.ID, _ int64) error {
		f, err := index.LoadFile(ctx, cr.r, id)
		if err != nil {
			return err
		}
		for _, pe := range f.Packs {
			if pe.Pack == p {
				found = append(found, id)
			}
		}
		return nil
	})
	if err != nil || len(found) != 1 {
		t.Fatalf("index files naming pack %s: %v (%v)", p.Short(), found, err)
	}
	return found[0]
}

// runCheck runs Check and returns its result and the messages of errors
// and of notes.
func runCheck(t *testing.T, r *repo.Repo, opts snapshot.CheckOptions) (snapshot.CheckResult, []string, []string) {
	t.Helper()
	var errs, notes []string
	opts.Report = func(is snapshot.CheckIssue) {
		if strings.Contains(is.Message, "\n") {
			t.Errorf("issue spans several lines: %q", is.Message)
		}
		if is.Note {
			notes = append(notes, is.Message)
		} else {
			errs = append(errs, is.Message)
		}
	}
	res, err := snapshot.Check(context.Background(), r, opts)
	if err != nil {
		t.Fatal(err)
	}
	if res.Errors != len(errs) || res.Notes != len(notes) {
		t.Fatalf("result counts %d errors, %d notes; reported %d, %d", res.Errors, res.Notes, len(errs), len(notes))
	}
	return res, errs, notes
}

func mentioning(msgs []string, s string) int {
	n := 0
	for _, m := range msgs {
		if strings.Contains(m, s) {
			n++
		}
	}
	return n
}

func TestCheckHealthy(t *testing.T) {
	cr := newCheckRepo(t)
	res, errs, notes := runCheck(t, cr.r, snapshot.CheckOptions{})
	if len(errs)+len(notes) > 0 {
		t.Fatalf("healthy repository: errors %q, notes %q", errs, notes)
	}
	// 4 packs; 7 data blobs and 2 trees.
	if res.Snapshots != 1 || res.Trees != 2 || res.Packs != 4 || res.Blobs != 9 || res.PacksRead != 0 {
		t.Fatalf("structure check: %+v", res)
	}
	res, errs, _ = runCheck(t, cr.r, snapshot.CheckOptions{ReadData: true})
	if len(errs) > 0 || res.PacksRead != 4 || res.BlobsRead != 9 {
		t.Fatalf("read-data check: %+v, errors %q", res, errs)
	}
	var sizes int64
	if err := cr.r.ListIDs(context.Background(), repo.PackFile, func(_ repo.ID, size int64) error { sizes += size; return nil }); err != nil {
		t.Fatal(err)
	}
	if res.BytesRead != sizes {
		t.Fatalf("read %d bytes, the packs hold %d", res.BytesRead, sizes)
	}
	// The groups of n/t split the packs between them.
	read := 0
	for n := 1; n <= 3; n++ {
		res, errs, _ := runCheck(t, cr.r, snapshot.CheckOptions{ReadData: true, Subset: snapshot.Subset{N: n, T: 3}})
		if len(errs) > 0 {
			t.Fatalf("subset %d/3: %q", n, errs)
		}
		read += res.PacksRead
	}
	if read != 4 {
		t.Fatalf("subsets 1/3, 2/3 and 3/3 read %d packs, want 4", read)
	}
	res, _, _ = runCheck(t, cr.r, snapshot.CheckOptions{ReadData: true, Subset: snapshot.Subset{Percent: 50}})
	if res.PacksRead != 2 {
		t.Fatalf("50%% of 4 packs read %d", res.PacksRead)
	}
}

func TestCheckDamagedDataPack(t *testing.T) {
	cr := newCheckRepo(t)
	cr.flipByte(t, packHandle(cr.dataAB), 100) // inside the first blob of /a
	_, errs, _ := runCheck(t, cr.r, snapshot.CheckOptions{})
	if len(errs) > 0 {
		t.Fatalf("the structure is intact, yet: %q", errs)
	}
	_, errs, _ = runCheck(t, cr.r, snapshot.CheckOptions{ReadData: true})
	if len(errs) == 0 || mentioning(errs, cr.dataAB.Short()) != len(errs) {
		t.Fatalf("want errors naming pack %s, got %q", cr.dataAB.Short(), errs)
	}
	if mentioning(errs, "does not match its name") != 1 {
		t.Fatalf("want the pack's content reported as not matching its name: %q", errs)
	}
	// A subset without that pack sees nothing.
	for n := 1; n <= 2; n++ {
		res, errs, _ := runCheck(t, cr.r, snapshot.CheckOptions{ReadData: true, Subset: snapshot.Subset{N: n, T: 2}})
		if hit := int(cr.dataAB[0])%2 == n-1; hit != (len(errs) > 0) {
			t.Fatalf("subset %d/2 (read %d packs): errors %q", n, res.PacksRead, errs)
		}
	}
}

func TestCheckDamagedHeader(t *testing.T) {
	cr := newCheckRepo(t)
	cr.flipByte(t, packHandle(cr.dataCD), -10)
	_, errs, _ := runCheck(t, cr.r, snapshot.CheckOptions{})
	if len(errs) != 1 || mentioning(errs, cr.dataCD.Short()) != 1 || mentioning(errs, "header") != 1 {
		t.Fatalf("want one error about the header of pack %s, got %q", cr.dataCD.Short(), errs)
	}
}

func TestCheckMissingIndexFile(t *testing.T) {
	cr := newCheckRepo(t)
	cr.remove(t, repo.Handle{Type: repo.IndexFile, Name: cr.indexFileOf(t, cr.dataAB).String()})
	_, errs, notes := runCheck(t, cr.r, snapshot.CheckOptions{})
	// /a has two blobs, /b one: each missing blob is named with its file.
	if len(errs) != 3 || mentioning(errs, "/a: data blob") != 2 || mentioning(errs, "/b: data blob") != 1 ||
		mentioning(errs, cr.sn.ID.Short()) != 3 || mentioning(errs, "not in the index") != 3 {
		t.Fatalf("errors %q", errs)
	}
	if len(notes) != 1 || mentioning(notes, cr.dataAB.Short()) != 1 {
		t.Fatalf("want the unindexed pack as a note, got %q", notes)
	}
}

func TestCheckMissingPacks(t *testing.T) {
	cr := newCheckRepo(t)
	cr.remove(t, packHandle(cr.dataCD))
	cr.remove(t, packHandle(cr.subTree))
	_, errs, _ := runCheck(t, cr.r, snapshot.CheckOptions{ReadData: true})
	if mentioning(errs, cr.dataCD.Short()+" is missing") != 1 || mentioning(errs, cr.subTree.Short()+" is missing") != 1 {
		t.Fatalf("want both missing packs named: %q", errs)
	}
	// The tree of /sub is gone: named with its directory; c and d below it
	// cannot even be seen.
	if mentioning(errs, cr.sn.ID.Short()+": /sub: tree blob") != 1 || len(errs) != 3 {
		t.Fatalf("errors %q", errs)
	}
}

func TestCheckOrphanPack(t *testing.T) {
	cr := newCheckRepo(t)
	w := pack.NewWriter(repo.DataBlob, nil)
	data := []byte("left by an interrupted backup")
	id := repo.ID(cr.r.Key().BlobID(data))
	w.Add(id, cr.r.Key().Seal(nil, repo.Encode(nil, data, repo.CompressOff), repo.BlobAD(repo.DataBlob, id)), len(data))
	p, err := w.Finish(cr.r.Key())
	if err != nil {
		t.Fatal(err)
	}
	if err := cr.be.Save(context.Background(), packHandle(p.ID), p.Data, p.Size); err != nil {
		t.Fatal(err)
	}
	_, errs, notes := runCheck(t, cr.r, snapshot.CheckOptions{ReadData: true})
	if len(errs) > 0 || len(notes) != 1 || mentioning(notes, p.ID.Short()) != 1 {
		t.Fatalf("errors %q, notes %q", errs, notes)
	}
}

func TestCheckIndexDisagreesWithHeader(t *testing.T) {
	cr := newCheckRepo(t)
	ctx := context.Background()
	old := cr.indexFileOf(t, cr.dataAB)
	f, err := index.LoadFile(ctx, cr.r, old)
	if err != nil {
		t.Fatal(err)
	}
	for i := range f.Packs {
		if f.Packs[i].Pack == cr.dataAB {
			f.Packs[i].Blobs[0].RawLength++
		}
	}
	f.Supersedes = []repo.ID{old}
	if _, err := cr.r.SaveFile(ctx, repo.IndexFile, f.Encode()); err != nil {
		t.Fatal(err)
	}
	res, errs, _ := runCheck(t, cr.r, snapshot.CheckOptions{})
	if len(errs) != 1 || mentioning(errs, cr.dataAB.Short()) != 1 || res.IndexFiles != 4+1 {
		t.Fatalf("want one error naming pack %s: %q (%+v)", cr.dataAB.Short(), errs, res)
	}
	// Reading the blob as the index describes it fails too.
	_, errs, _ = runCheck(t, cr.r, snapshot.CheckOptions{ReadData: true})
	if len(errs) != 2 || mentioning(errs, cr.dataAB.Short()) != 2 {
		t.Fatalf("read-data: %q", errs)
	}
}

func TestCheckUnreadableFiles(t *testing.T) {
	cr := newCheckRepo(t)
	idxFile := cr.indexFileOf(t, cr.dataCD)
	cr.flipByte(t, repo.Handle{Type: repo.IndexFile, Name: idxFile.String()}, 30)
	cr.flipByte(t, repo.Handle{Type: repo.SnapshotFile, Name: cr.sn.ID.String()}, 30)
	_, errs, _ := runCheck(t, cr.r, snapshot.CheckOptions{})
	if mentioning(errs, "index "+idxFile.Short()) != 1 || mentioning(errs, "snapshot "+cr.sn.ID.Short()) != 1 {
		t.Fatalf("want the damaged index file and snapshot named: %q", errs)
	}
}

func TestParseSubset(t *testing.T) {
	good := map[string]snapshot.Subset{
		"1/2": {N: 1, T: 2}, "3/3": {N: 3, T: 3}, "1/256": {N: 1, T: 256},
		"10%": {Percent: 10}, "100%": {Percent: 100}, "0.5%": {Percent: 0.5},
	}
	for s, want := range good {
		got, err := snapshot.ParseSubset(s)
		if err != nil || got != want {
			t.Errorf("%q: %+v, %v; want %+v", s, got, err, want)
		}
		if got.String() != s {
			t.Errorf("%q prints as %q", s, got.String())
		}
	}
	for _, s := range []string{"", "0/2", "3/2", "1/0", "1/257", "-1/2", "a/b", "1/2/3", "0%", "101%", "x%", "%", "10"} {
		if got, err := snapshot.ParseSubset(s); err == nil {
			t.Errorf("%q accepted as %+v", s, got)
		}
	}
}

// TestSubsetPartition: the groups of n/t are disjoint, cover every pack,
// and each holds about 1/t of them; P% picks that share at random.
func TestSubsetPartition(t *testing.T) {
	rnd := rand.New(rand.NewSource(2))
	ids := make([]repo.ID, 1000)
	for i := range ids {
		rnd.Read(ids[i][:])
	}
	slices.SortFunc(ids, func(a, b repo.ID) int { return bytes.Compare(a[:], b[:]) })
	for _, groups := range []int{1, 2, 3, 7, 256} {
		seen := map[repo.ID]int{}
		for n := 1; n <= groups; n++ {
			got := snapshot.ChooseSubset(snapshot.Subset{N: n, T: groups}, ids)
			if groups <= 7 && (len(got) < 1000/groups*3/4 || len(got) > 1000/groups*5/4) {
				t.Errorf("group %d/%d holds %d of 1000 packs", n, groups, len(got))
			}
			again := snapshot.ChooseSubset(snapshot.Subset{N: n, T: groups}, ids)
			if !slices.Equal(got, again) {
				t.Errorf("group %d/%d differs from one call to the next", n, groups)
			}
			for _, id := range got {
				seen[id]++
			}
		}
		for _, id := range ids {
			if seen[id] != 1 {
				t.Fatalf("t=%d: pack %s is in %d groups", groups, id.Short(), seen[id])
			}
		}
	}
	for _, pct := range []float64{0.01, 1, 10, 50, 100} {
		got := snapshot.ChooseSubset(snapshot.Subset{Percent: pct}, ids)
		if want := max(1, int(1000*pct/100)); len(got) != want {
			t.Errorf("%v%%: %d packs, want %d", pct, len(got), want)
		}
		if len(got) != len(slices.Compact(slices.Clone(got))) {
			t.Errorf("%v%%: a pack is chosen twice", pct)
		}
	}
	if a, b := snapshot.ChooseSubset(snapshot.Subset{Percent: 10}, ids), snapshot.ChooseSubset(snapshot.Subset{Percent: 10}, ids); slices.Equal(a, b) {
		t.Errorf("two random 10%% subsets are the same")
	}
	if got := snapshot.ChooseSubset(snapshot.Subset{}, ids); len(got) != len(ids) {
		t.Errorf("no subset chose %d of %d packs", len(got), len(ids))
	}
}

// TestCheckUsesAnyCopy: a blob stored twice is available as long as one of
// its packs is.
func TestCheckUsesAnyCopy(t *testing.T) {
	cr := newCheckRepo(t)
	ctx := context.Background()
	data, err := repo.ReadAll(ctx, cr.be, packHandle(cr.dataAB))
	if err != nil {
		t.Fatal(err)
	}
	hdr, err := pack.LoadHeader(ctx, cr.be, cr.r.Key(), cr.dataAB, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	w := pack.NewWriter(repo.DataBlob, nil)
	for _, b := range hdr {
		w.Add(b.ID, data[b.Offset:b.Offset+b.Length], int(b.RawLength))
	}
	p, err := w.Finish(cr.r.Key())
	if err != nil {
		t.Fatal(err)
	}
	if err := cr.be.Save(ctx, packHandle(p.ID), p.Data, p.Size); err != nil {
		t.Fatal(err)
	}
	origIndex := cr.indexFileOf(t, cr.dataAB)
	f := &index.File{Packs: []index.PackEntries{{Pack: p.ID, Blobs: p.Blobs}}}
	copyIndex, err := cr.r.SaveFile(ctx, repo.IndexFile, f.Encode())
	if err != nil {
		t.Fatal(err)
	}
	if _, errs, _ := runCheck(t, cr.r, snapshot.CheckOptions{ReadData: true}); len(errs) > 0 {
		t.Fatalf("two copies: %q", errs)
	}
	// Remove the copy met first (index files are read in name order).
	gone := cr.dataAB
	if bytes.Compare(copyIndex[:], origIndex[:]) < 0 {
		gone = p.ID
	}
	cr.remove(t, packHandle(gone))
	_, errs, _ := runCheck(t, cr.r, snapshot.CheckOptions{ReadData: true})
	if len(errs) != 1 || mentioning(errs, gone.Short()+" is missing") != 1 {
		t.Fatalf("want only the missing pack reported: %q", errs)
	}
}

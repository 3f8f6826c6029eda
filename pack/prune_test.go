package pack_test

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/cairn-backup/cairn/index"
	"github.com/cairn-backup/cairn/pack"
	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/repo/mem"
)

// savePack stores blobs of type t (random, incompressible, n bytes each,
// seeds from seed on) in one pack with its own index file, and returns them.
func savePack(t *testing.T, s *pack.Store, bt repo.BlobType, seed int64, sizes ...int) []savedBlob {
	t.Helper()
	var blobs []savedBlob
	for i, n := range sizes {
		blobs = append(blobs, savedBlob{t: bt, data: random(seed+int64(i), n)})
	}
	return saveAll(t, s, blobs)
}

func usedSet(lists ...[]savedBlob) pack.BlobSet {
	used := pack.BlobSet{}
	for _, l := range lists {
		for _, b := range l {
			used.Add(b.t, b.id)
		}
	}
	return used
}

// indexCopies counts, over the current index files, the entries of each
// blob, and returns the packs they name.
func indexCopies(t *testing.T, r *repo.Repo) (map[pack.BlobKey]int, map[repo.ID]bool) {
	t.Helper()
	ctx := context.Background()
	var ids []repo.ID
	if err := r.ListIDs(ctx, repo.IndexFile, func(id repo.ID, _ int64) error { ids = append(ids, id); return nil }); err != nil {
		t.Fatal(err)
	}
	files := map[repo.ID]*index.File{}
	superseded := map[repo.ID]bool{}
	for _, id := range ids {
		f, err := index.LoadFile(ctx, r, id)
		if err != nil {
			t.Fatal(err)
		}
		files[id] = f
		for _, s := range f.Supersedes {
			superseded[s] = true
		}
	}
	copies := map[pack.BlobKey]int{}
	named := map[repo.ID]bool{}
	for id, f := range files {
		if superseded[id] {
			continue
		}
		for _, p := range f.Packs {
			named[p.Pack] = true
			for _, e := range p.Blobs {
				copies[pack.BlobKey{Type: e.Type, ID: e.ID}]++
			}
		}
	}
	return copies, named
}

// wantLoadable checks that a fresh store reads every blob byte for byte.
func wantLoadable(t *testing.T, r *repo.Repo, lists ...[]savedBlob) {
	t.Helper()
	s := newStore(t, r)
	for _, l := range lists {
		for _, b := range l {
			got, err := s.LoadBlob(context.Background(), b.t, b.id, nil)
			if err != nil {
				t.Fatalf("blob %s after prune: %v", b.id.Short(), err)
			}
			if !bytes.Equal(got, b.data) {
				t.Fatalf("blob %s differs after prune", b.id.Short())
			}
		}
	}
}

func listing(t *testing.T, be repo.Backend) []string {
	t.Helper()
	var out []string
	for _, ft := range []repo.FileType{repo.KeyFile, repo.PackFile, repo.IndexFile, repo.SnapshotFile, repo.LockFile} {
		if err := be.List(context.Background(), ft, func(fi repo.FileInfo) error {
			out = append(out, string(ft)+"/"+fi.Name)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func TestPruneDeletesAndRepacks(t *testing.T) {
	ctx := context.Background()
	be := mem.New()
	r := newRepo(t, be)
	s := newStore(t, r)
	full := savePack(t, s, repo.DataBlob, 100, 4000, 4000, 4000, 4000)
	mixed := savePack(t, s, repo.DataBlob, 200, 4000, 4000, 4000, 4000)
	dead := savePack(t, s, repo.TreeBlob, 300, 500, 500)
	used := usedSet(full, mixed[:1])
	if n := count(t, be, repo.PackFile); n != 3 {
		t.Fatalf("%d packs to start with, want 3", n)
	}
	before := listing(t, be)

	plan, err := s.PlanPrune(ctx, used, pack.PruneOptions{MaxUnused: 5})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(listing(t, be), before) {
		t.Fatal("planning changed the repository")
	}
	st := plan.Stats
	if st.UsedBlobs != 5 || st.UnusedBlobs != 5 || st.PacksDeleted != 1 || st.PacksRepacked != 1 || st.BlobsRepacked != 1 {
		t.Fatalf("plan %+v: want 5 used and 5 unused blobs, 1 pack deleted, 1 repacked with 1 blob", st)
	}
	var actions []string
	for _, a := range plan.Actions() {
		actions = append(actions, a.Action)
	}
	slices.Sort(actions)
	if !slices.Equal(actions, []string{"delete", "repack"}) {
		t.Fatalf("actions %v", actions)
	}

	if err := s.Prune(ctx, plan, nil); err != nil {
		t.Fatal(err)
	}
	if n := count(t, be, repo.PackFile); n != 2 {
		t.Errorf("%d packs after prune, want the full one and one new", n)
	}
	if n := count(t, be, repo.IndexFile); n != 1 {
		t.Errorf("%d index files after prune, want 1", n)
	}
	if plan.Stats.BytesFreed() <= 0 || plan.Stats.PacksWritten != 1 {
		t.Errorf("stats after prune %+v", plan.Stats)
	}
	var sizes int64
	if err := be.List(ctx, repo.PackFile, func(fi repo.FileInfo) error { sizes += fi.Size; return nil }); err != nil {
		t.Fatal(err)
	}
	if sizes != plan.Stats.SizeAfter {
		t.Errorf("packs take %d bytes, stats say %d", sizes, plan.Stats.SizeAfter)
	}
	wantLoadable(t, r, full, mixed[:1])
	s2 := newStore(t, r)
	for _, b := range append(slices.Clone(mixed[1:]), dead...) {
		if s2.Index().Has(b.t, b.id) {
			t.Errorf("unused %s blob %s is still indexed", b.t, b.id.Short())
		}
	}
	copies, named := indexCopies(t, r)
	for id := range named {
		if _, err := be.Stat(ctx, repo.Handle{Type: repo.PackFile, Name: id.String()}); err != nil {
			t.Errorf("the index names pack %s: %v", id.Short(), err)
		}
	}
	if len(copies) != 5 {
		t.Errorf("the index holds %d blobs, want the 5 in use", len(copies))
	}

	// Nothing is left to do.
	plan, err = s2.PlanPrune(ctx, used, pack.PruneOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !plan.Empty() || plan.Stats.UnusedBlobs != 0 {
		t.Fatalf("a second plan is not empty: %+v", plan.Stats)
	}
}

// TestPruneMaxUnused: packs with the largest unused share go first, until
// what stays unused is within the limit.
func TestPruneMaxUnused(t *testing.T) {
	const n = 2000
	cases := []struct {
		maxUnused float64
		repacked  []string
	}{
		{100, nil},
		{20, nil},           // 3 of 18 units unused: 16.7%
		{10, []string{"b"}}, // after b, 1 of 16: 6.25%
		{5, []string{"b", "c"}},
		{0, []string{"b", "c"}},
	}
	for _, tc := range cases {
		ctx := context.Background()
		r := newRepo(t, mem.New())
		s := newStore(t, r)
		a := savePack(t, s, repo.DataBlob, 100, slices.Repeat([]int{n}, 10)...)
		b := savePack(t, s, repo.DataBlob, 200, n, n, n, n) // half used
		c := savePack(t, s, repo.DataBlob, 300, n, n, n, n) // three quarters used
		names := map[repo.ID]string{}
		for name, l := range map[string][]savedBlob{"a": a, "b": b, "c": c} {
			e, ok := s.Index().Lookup(l[0].t, l[0].id)
			if !ok {
				t.Fatal("saved blob not indexed")
			}
			names[e.Pack] = name
		}
		used := usedSet(a, b[:2], c[:3])
		plan, err := s.PlanPrune(ctx, used, pack.PruneOptions{MaxUnused: tc.maxUnused})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, act := range plan.Actions() {
			if act.Action != "repack" {
				t.Errorf("max-unused %g: %s pack %s", tc.maxUnused, act.Action, names[act.Pack])
			}
			got = append(got, names[act.Pack])
		}
		if !slices.Equal(got, tc.repacked) {
			t.Errorf("max-unused %g: repacked %v, want %v", tc.maxUnused, got, tc.repacked)
		}
		if err := s.Prune(ctx, plan, nil); err != nil {
			t.Fatal(err)
		}
		wantLoadable(t, r, a, b[:2], c[:3])
	}
}

// TestPruneDuplicates: two backups that raced stored the same blob twice;
// the copy in the pack used least goes.
func TestPruneDuplicates(t *testing.T) {
	ctx := context.Background()
	be := mem.New()
	r := newRepo(t, be)
	s1, s2 := newStore(t, r), newStore(t, r) // indexes loaded before either saved
	dup := random(7, 3000)
	first := saveAll(t, s1, []savedBlob{{t: repo.DataBlob, data: dup}, {t: repo.DataBlob, data: random(8, 3000)}, {t: repo.DataBlob, data: random(9, 3000)}})
	second := saveAll(t, s2, []savedBlob{{t: repo.DataBlob, data: dup}, {t: repo.DataBlob, data: random(10, 3000)}})
	copies, _ := indexCopies(t, r)
	key := pack.BlobKey{Type: repo.DataBlob, ID: first[0].id}
	if copies[key] != 2 {
		t.Fatalf("%d copies of the shared blob to start with, want 2", copies[key])
	}
	s := newStore(t, r)
	used := usedSet(first, second)
	plan, err := s.PlanPrune(ctx, used, pack.PruneOptions{MaxUnused: 0})
	if err != nil {
		t.Fatal(err)
	}
	if plan.Stats.DuplicateBlobs != 1 || plan.Stats.PacksRepacked != 1 || plan.Stats.BlobsRepacked != 1 {
		t.Fatalf("plan %+v: want the smaller pack repacked without its extra copy", plan.Stats)
	}
	if err := s.Prune(ctx, plan, nil); err != nil {
		t.Fatal(err)
	}
	copies, _ = indexCopies(t, r)
	if copies[key] != 1 {
		t.Errorf("%d copies of the shared blob after prune, want 1", copies[key])
	}
	n := 0
	for _, blobs := range packs(t, r) {
		for _, b := range blobs {
			if b.ID == key.ID {
				n++
			}
		}
	}
	if n != 1 {
		t.Errorf("%d packs hold the shared blob after prune, want 1", n)
	}
	wantLoadable(t, r, first, second)
}

// TestPruneOrphansAndMissing: a pack no index names goes; an indexed pack
// that is gone is dropped from the index when nothing needs it, and stops
// the prune when something does.
func TestPruneOrphansAndMissing(t *testing.T) {
	ctx := context.Background()
	be := mem.New()
	r := newRepo(t, be)
	s := newStore(t, r)
	kept := savePack(t, s, repo.DataBlob, 10, 1000, 1000)
	lost := savePack(t, s, repo.DataBlob, 20, 1000)
	orphan := buildPack(t, r.Key(), repo.DataBlob, []int{1000})
	orphanID := store(t, be, orphan.data)

	lostPack, _ := s.Index().Lookup(repo.DataBlob, lost[0].id)
	if err := be.Remove(ctx, repo.Handle{Type: repo.PackFile, Name: lostPack.Pack.String()}); err != nil {
		t.Fatal(err)
	}

	_, err := s.PlanPrune(ctx, usedSet(kept, lost), pack.PruneOptions{MaxUnused: 5})
	if err == nil || !strings.Contains(err.Error(), lostPack.Pack.Short()) || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("a used blob in a missing pack: %v, want an error naming the pack", err)
	}
	_, err = s.PlanPrune(ctx, usedSet(kept, []savedBlob{{t: repo.DataBlob, id: repo.ID{1}}}), pack.PruneOptions{})
	if !errors.Is(err, pack.ErrBlobNotFound) {
		t.Fatalf("a used blob in no index: %v", err)
	}

	plan, err := s.PlanPrune(ctx, usedSet(kept), pack.PruneOptions{MaxUnused: 5})
	if err != nil {
		t.Fatal(err)
	}
	st := plan.Stats
	if st.OrphanPacks != 1 || st.PacksDeleted != 1 || st.MissingPacks != 1 || st.PacksRepacked != 0 {
		t.Fatalf("plan %+v: want the orphan deleted and the missing pack dropped", st)
	}
	if err := s.Prune(ctx, plan, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := be.Stat(ctx, repo.Handle{Type: repo.PackFile, Name: orphanID.String()}); !errors.Is(err, repo.ErrNotFound) {
		t.Errorf("orphan pack: %v, want it deleted", err)
	}
	_, named := indexCopies(t, r)
	if named[lostPack.Pack] {
		t.Error("the index still names the missing pack")
	}
	wantLoadable(t, r, kept)
}

func TestPruneOptions(t *testing.T) {
	r := newRepo(t, mem.New())
	s := newStore(t, r)
	for _, v := range []float64{-1, 101} {
		if _, err := s.PlanPrune(context.Background(), pack.BlobSet{}, pack.PruneOptions{MaxUnused: v}); err == nil {
			t.Errorf("max unused %g accepted", v)
		}
	}
	// An empty repository has nothing to prune.
	plan, err := s.PlanPrune(context.Background(), pack.BlobSet{}, pack.PruneOptions{MaxUnused: 5})
	if err != nil || !plan.Empty() {
		t.Fatalf("empty repository: %v, %+v", err, plan)
	}
}

// TestPruneIndexOverlap: a pack named by two index files counts once.
func TestPruneIndexOverlap(t *testing.T) {
	ctx := context.Background()
	be := mem.New()
	r := newRepo(t, be)
	s := newStore(t, r)
	blobs := savePack(t, s, repo.DataBlob, 40, 1000, 1000, 1000)
	var ids []repo.ID
	if err := r.ListIDs(ctx, repo.IndexFile, func(id repo.ID, _ int64) error { ids = append(ids, id); return nil }); err != nil {
		t.Fatal(err)
	}
	f, err := index.LoadFile(ctx, r, ids[0])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.SaveFile(ctx, repo.IndexFile, f.Encode()); err != nil {
		t.Fatal(err)
	}
	plan, err := s.PlanPrune(ctx, usedSet(blobs), pack.PruneOptions{MaxUnused: 0})
	if err != nil {
		t.Fatal(err)
	}
	if st := plan.Stats; !plan.Empty() || st.UsedBlobs != 3 || st.UnusedBlobs != 0 || st.DuplicateBlobs != 0 {
		t.Fatalf("plan %+v: want 3 used blobs and nothing to do", st)
	}
	plan, err = s.PlanPrune(ctx, usedSet(blobs[:2]), pack.PruneOptions{MaxUnused: 0})
	if err != nil {
		t.Fatal(err)
	}
	if st := plan.Stats; st.UsedBlobs != 2 || st.UnusedBlobs != 1 || st.PacksRepacked != 1 {
		t.Fatalf("plan %+v: want 2 used blobs repacked, 1 unused", st)
	}
	if err := s.Prune(ctx, plan, nil); err != nil {
		t.Fatal(err)
	}
	if n := count(t, be, repo.IndexFile); n != 1 {
		t.Errorf("%d index files after prune, want 1", n)
	}
	wantLoadable(t, r, blobs[:2])
}

// TestPruneMergesSmallPacks: once a type has ten packs under half the pack
// size, a prune merges them; fewer stay, and --max-unused 100 repacks none.
func TestPruneMergesSmallPacks(t *testing.T) {
	cases := []struct {
		dataPacks int
		maxUnused float64
		wantPacks int // after the prune, the 3 tree packs included
	}{
		{12, 5, 1 + 3},
		{12, 0, 1 + 3},
		{12, 100, 12 + 3},
		{9, 5, 9 + 3},
	}
	for _, tc := range cases {
		ctx := context.Background()
		be := mem.New()
		r := newRepo(t, be)
		s := newStore(t, r)
		var lists [][]savedBlob
		for i := range tc.dataPacks {
			lists = append(lists, savePack(t, s, repo.DataBlob, int64(100*i), 3000, 3000))
		}
		for i := range 3 {
			lists = append(lists, savePack(t, s, repo.TreeBlob, int64(10000+100*i), 500))
		}
		plan, err := s.PlanPrune(ctx, usedSet(lists...), pack.PruneOptions{MaxUnused: tc.maxUnused})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Prune(ctx, plan, nil); err != nil {
			t.Fatal(err)
		}
		if n := count(t, be, repo.PackFile); n != tc.wantPacks {
			t.Errorf("%d small data packs, max-unused %g: %d packs after prune, want %d", tc.dataPacks, tc.maxUnused, n, tc.wantPacks)
		}
		wantLoadable(t, r, lists...)
	}
}

package pack

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"slices"

	"github.com/cairn-backup/cairn/crypto"
	"github.com/cairn-backup/cairn/index"
	"github.com/cairn-backup/cairn/repo"
)

// Pruning works at the level of packs and index files and knows nothing of
// snapshots: the caller says which blobs are in use. A prune runs in an
// order that leaves a valid repository wherever it stops:
//
//  1. the used blobs of packs being repacked are copied into new packs;
//  2. index files naming every kept and new pack are written, the last of
//     them superseding every index file that was there before;
//  3. the old index files are deleted;
//  4. the packs no index names any more are deleted.
//
// Until step 2 ends, the old index files are the truth and every pack they
// name is still there; the new packs are not yet named by any index that
// counts, which is harmless. From then on, only the new index files count,
// and they name no pack that a later step deletes.

// BlobKey names a blob: its type and ID.
type BlobKey struct {
	Type repo.BlobType
	ID   repo.ID
}

// BlobSet is a set of blobs.
type BlobSet map[BlobKey]struct{}

// Add puts blob id of type t in the set.
func (s BlobSet) Add(t repo.BlobType, id repo.ID) { s[BlobKey{t, id}] = struct{}{} }

// Has reports whether blob id of type t is in the set.
func (s BlobSet) Has(t repo.BlobType, id repo.ID) bool {
	_, ok := s[BlobKey{t, id}]
	return ok
}

// PruneOptions tune a prune.
type PruneOptions struct {
	// MaxUnused is how much of the repository, in percent, may stay unused
	// in packs kept as they are; packs with the most unused space are
	// repacked until the rest is within it. 100 repacks nothing, not even
	// small packs (see mergeSmall); 0 repacks every pack that holds anything
	// unused.
	MaxUnused float64
	// IndexFileBlobs bounds the blobs one new index file lists (default
	// index.FlushEvery).
	IndexFileBlobs int
}

// mergeSmall is how many small packs of one type a prune lets stand before
// it merges them: few enough to keep a nightly repository's pack count in
// check, many enough that a prune does not rewrite the last night's packs
// every time.
const mergeSmall = 10

// PruneStats describes a prune: what PlanPrune found and what Prune does
// (or would do).
type PruneStats struct {
	UsedBlobs      int   `json:"used_blobs"`      // blobs in use, one copy each
	UsedBytes      int64 `json:"used_bytes"`      // their stored size
	UnusedBlobs    int   `json:"unused_blobs"`    // indexed blobs nothing uses, and extra copies
	UnusedBytes    int64 `json:"unused_bytes"`    // their stored size
	DuplicateBlobs int   `json:"duplicate_blobs"` // extra copies of used blobs (among the unused)
	Packs          int   `json:"packs"`           // packs in the repository before
	PacksDeleted   int   `json:"packs_deleted"`   // deleted for holding nothing in use
	OrphanPacks    int   `json:"orphan_packs"`    // of those, packs no index named
	MissingPacks   int   `json:"missing_packs"`   // indexed, absent, nothing in use: dropped from the index
	PacksRepacked  int   `json:"packs_repacked"`  // rewritten without their unused blobs
	BlobsRepacked  int   `json:"blobs_repacked"`  // used blobs copied into new packs
	BytesRepacked  int64 `json:"bytes_repacked"`  // their stored size
	PacksWritten   int   `json:"packs_written"`   // new packs (estimated before Prune)
	IndexRemoved   int   `json:"index_files_removed"`
	IndexWritten   int   `json:"index_files_written"` // (estimated before Prune)
	SizeBefore     int64 `json:"size_before"`         // bytes in packs before
	SizeAfter      int64 `json:"size_after"`          // bytes in packs after (estimated before Prune)
}

// BytesFreed is how much less the packs take after the prune.
func (st PruneStats) BytesFreed() int64 { return st.SizeBefore - st.SizeAfter }

// PackAction is what a prune does to one pack.
type PackAction struct {
	Pack   repo.ID
	Action string // "delete" or "repack"
	Size   int64  // the pack's size
	Used   int64  // stored bytes of the blobs in use it holds
}

// PrunePlan is what Prune will do; PlanPrune makes it.
type PrunePlan struct {
	Stats PruneStats

	indexFiles   []repo.ID    // every index file present: all are replaced
	fileBlobs    int          // blobs per new index file at most
	rewriteIndex bool         // false: only orphan packs go, the index stays
	keep         []*prunePack // packs kept as they are
	repack       []*prunePack // packs whose used blobs move to new packs
	remove       []repo.ID    // packs deleted once the new index is written
	actions      []PackAction
}

// Actions lists the packs the plan deletes or repacks.
func (p *PrunePlan) Actions() []PackAction { return p.actions }

// Empty reports whether the plan changes nothing.
func (p *PrunePlan) Empty() bool { return !p.rewriteIndex && len(p.remove) == 0 }

// prunePack is one pack as the current index files describe it.
type prunePack struct {
	id      repo.ID
	size    int64 // -1: absent from the backend
	entries []repo.PackedBlob
	score   int64             // stored bytes of used blobs, every copy counted
	keepers []repo.PackedBlob // the used blobs whose copy here is the one kept
	used    int64             // stored bytes of the keepers
	unused  int64             // stored bytes of everything else, header aside
}

// add records entries of p from an index file. A pack that several files
// name (two flushes racing) is listed once.
func (p *prunePack) add(blobs []repo.PackedBlob) {
	type loc struct {
		k   BlobKey
		off uint32
	}
	var seen map[loc]bool
	if len(p.entries) > 0 {
		seen = make(map[loc]bool, len(p.entries))
		for _, e := range p.entries {
			seen[loc{BlobKey{e.Type, e.ID}, e.Offset}] = true
		}
	}
	for _, e := range blobs {
		if seen[loc{BlobKey{e.Type, e.ID}, e.Offset}] {
			continue
		}
		e.Pack = p.id
		p.entries = append(p.entries, e)
	}
}

// headerSize is the size of the sealed header of a pack of n blobs, with
// its length field.
func headerSize(n int) int64 {
	return int64(crypto.Overhead + 2 + recordSize*n + 4)
}

// PlanPrune decides what a prune removes, given every blob in use. It reads
// every index file (superseded ones too: the new index replaces them all)
// and lists the packs; it changes nothing. A used blob that no present pack
// holds is an error: the repository is damaged and pruning could lose data.
func (s *Store) PlanPrune(ctx context.Context, used BlobSet, opts PruneOptions) (*PrunePlan, error) {
	if opts.MaxUnused < 0 || opts.MaxUnused > 100 {
		return nil, fmt.Errorf("max unused %g%% is not between 0 and 100", opts.MaxUnused)
	}
	plan := &PrunePlan{fileBlobs: opts.IndexFileBlobs}
	if plan.fileBlobs <= 0 {
		plan.fileBlobs = index.FlushEvery
	}
	packs, superseded, err := s.loadIndexFiles(ctx, plan)
	if err != nil {
		return nil, err
	}
	sizes := map[repo.ID]int64{}
	if err := s.r.ListIDs(ctx, repo.PackFile, func(id repo.ID, size int64) error {
		sizes[id] = size
		return nil
	}); err != nil {
		return nil, fmt.Errorf("list packs: %w", err)
	}
	st := &plan.Stats
	st.Packs = len(sizes)
	for _, size := range sizes {
		st.SizeBefore += size
	}

	// Present packs, holding the most used data first: each used blob's
	// copy is kept in the first of them that has it, so that packs mostly
	// in use keep their blobs and the extra copies count as unused.
	var present []*prunePack
	missing := map[BlobKey]repo.ID{} // used blobs in absent packs, for the error
	for _, p := range packs {
		size, ok := sizes[p.id]
		if !ok {
			p.size = -1
			for _, e := range p.entries {
				if used.Has(e.Type, e.ID) {
					missing[BlobKey{e.Type, e.ID}] = p.id
				}
			}
			continue
		}
		p.size = size
		for _, e := range p.entries {
			if used.Has(e.Type, e.ID) {
				p.score += int64(e.Length)
			}
		}
		present = append(present, p)
	}
	slices.SortFunc(present, func(a, b *prunePack) int {
		if c := cmp.Compare(b.score, a.score); c != 0 {
			return c
		}
		return compareIDs(a.id, b.id)
	})
	kept := make(BlobSet, len(used))
	for _, p := range present {
		var all int64
		for _, e := range p.entries {
			all += int64(e.Length)
			k := BlobKey{e.Type, e.ID}
			_, isUsed := used[k]
			_, done := kept[k]
			switch {
			case isUsed && !done:
				kept[k] = struct{}{}
				p.keepers = append(p.keepers, e)
				p.used += int64(e.Length)
				st.UsedBlobs++
				st.UsedBytes += int64(e.Length)
			default:
				if isUsed {
					st.DuplicateBlobs++
				}
				p.unused += int64(e.Length)
				st.UnusedBlobs++
				st.UnusedBytes += int64(e.Length)
			}
		}
		// Bytes no index entry accounts for (a pack indexed in part) are
		// unused too.
		p.unused += max(0, p.size-all-headerSize(len(p.entries)))
	}
	if len(kept) != len(used) {
		for k := range used {
			if _, ok := kept[k]; ok {
				continue
			}
			if pid, ok := missing[k]; ok {
				return nil, fmt.Errorf("%s blob %s in use is in pack %s, which is missing", k.Type, k.ID.Short(), pid.Short())
			}
			return nil, fmt.Errorf("%s blob %s in use is in no index: %w", k.Type, k.ID.Short(), ErrBlobNotFound)
		}
	}

	var candidates []*prunePack
	var unused int64 // what stays unused in packs kept as they are
	for _, p := range present {
		switch {
		case p.used == 0:
			plan.remove = append(plan.remove, p.id)
			plan.actions = append(plan.actions, PackAction{Pack: p.id, Action: "delete", Size: p.size})
			st.PacksDeleted++
			plan.rewriteIndex = true
		case p.unused > 0:
			candidates = append(candidates, p)
			unused += p.unused
		}
	}
	for _, p := range packs {
		if p.size < 0 {
			st.MissingPacks++
			plan.rewriteIndex = true
		}
	}
	var orphans []repo.ID
	for id, size := range sizes {
		if _, ok := packs[id]; !ok {
			orphans = append(orphans, id)
			plan.actions = append(plan.actions, PackAction{Pack: id, Action: "delete", Size: size})
		}
	}
	slices.SortFunc(orphans, compareIDs)
	plan.remove = append(plan.remove, orphans...)
	st.OrphanPacks = len(orphans)
	st.PacksDeleted += len(orphans)

	// Repack the packs with the largest unused share until what stays
	// unused is within MaxUnused percent of the repository after the prune:
	// unused <= (used + unused) * p / 100.
	slices.SortFunc(candidates, func(a, b *prunePack) int {
		if c := cmp.Compare(float64(b.unused)/float64(b.size), float64(a.unused)/float64(a.size)); c != 0 {
			return c
		}
		return compareIDs(a.id, b.id)
	})
	limit := func() bool {
		if opts.MaxUnused >= 100 {
			return true
		}
		return float64(unused)*100 <= float64(st.UsedBytes+unused)*opts.MaxUnused
	}
	gone := map[repo.ID]bool{}
	for _, id := range plan.remove {
		gone[id] = true
	}
	repack := func(p *prunePack) {
		slices.SortFunc(p.keepers, func(a, b repo.PackedBlob) int { return cmp.Compare(a.Offset, b.Offset) })
		plan.repack = append(plan.repack, p)
		plan.remove = append(plan.remove, p.id)
		plan.actions = append(plan.actions, PackAction{Pack: p.id, Action: "repack", Size: p.size, Used: p.used})
		gone[p.id] = true
		unused -= p.unused
		st.PacksRepacked++
		st.BlobsRepacked += len(p.keepers)
		st.BytesRepacked += p.used
		plan.rewriteIndex = true
	}
	for _, p := range candidates {
		if limit() {
			break
		}
		repack(p)
	}

	// Every backup ends with a few partial packs (one per walker and blob
	// type), so small packs pile up night after night: once a type has
	// mergeSmall of them, under half the pack size each, they are merged.
	// A MaxUnused of 100 repacks nothing, these included.
	if opts.MaxUnused < 100 {
		small := map[repo.BlobType][]*prunePack{}
		for _, p := range present {
			if !gone[p.id] && p.used > 0 && p.size < int64(s.psize)/2 {
				t := p.keepers[0].Type
				small[t] = append(small[t], p)
			}
		}
		for _, t := range []repo.BlobType{repo.DataBlob, repo.TreeBlob} {
			if len(small[t]) >= mergeSmall {
				for _, p := range small[t] {
					repack(p)
				}
			}
		}
	}

	// Kept packs keep all their entries, unused ones too: a later backup
	// can still use them, and a later prune still counts them.
	for _, p := range present {
		if !gone[p.id] {
			plan.keep = append(plan.keep, p)
		}
	}
	slices.SortFunc(plan.keep, func(a, b *prunePack) int { return compareIDs(a.id, b.id) })
	if superseded > 0 {
		// Leftovers of an interrupted prune: replace them too.
		plan.rewriteIndex = true
	}
	s.estimate(plan)
	return plan, nil
}

// loadIndexFiles reads every index file and returns the packs the current
// ones (those no other file supersedes) name, and how many are superseded.
func (s *Store) loadIndexFiles(ctx context.Context, plan *PrunePlan) (map[repo.ID]*prunePack, int, error) {
	if err := s.r.ListIDs(ctx, repo.IndexFile, func(id repo.ID, _ int64) error {
		plan.indexFiles = append(plan.indexFiles, id)
		return nil
	}); err != nil {
		return nil, 0, fmt.Errorf("list index files: %w", err)
	}
	slices.SortFunc(plan.indexFiles, compareIDs)
	files := make(map[repo.ID]*index.File, len(plan.indexFiles))
	superseded := map[repo.ID]bool{}
	for _, id := range plan.indexFiles {
		f, err := index.LoadFile(ctx, s.r, id)
		if err != nil {
			return nil, 0, fmt.Errorf("load index %s: %w", id.Short(), err)
		}
		files[id] = f
		for _, sup := range f.Supersedes {
			superseded[sup] = true
		}
	}
	packs := map[repo.ID]*prunePack{}
	n := 0
	for _, id := range plan.indexFiles {
		if superseded[id] {
			n++
			continue
		}
		for _, pe := range files[id].Packs {
			p := packs[pe.Pack]
			if p == nil {
				p = &prunePack{id: pe.Pack}
				packs[pe.Pack] = p
			}
			p.add(pe.Blobs)
		}
		delete(files, id) // its entries are in packs now
	}
	return packs, n, nil
}

// estimate fills in the stats of what Prune writes: new packs, index files
// and the size after.
func (s *Store) estimate(plan *PrunePlan) {
	st := &plan.Stats
	st.SizeAfter = 0
	st.IndexRemoved, st.IndexWritten, st.PacksWritten = 0, 0, 0
	for _, p := range plan.keep {
		st.SizeAfter += p.size
	}
	var bytes [2]int64
	var blobs [2]int
	for _, p := range plan.repack {
		for _, e := range p.keepers {
			bytes[e.Type&1] += int64(e.Length)
			blobs[e.Type&1]++
		}
	}
	for t := range bytes {
		if blobs[t] == 0 {
			continue
		}
		n := max(1, int((bytes[t]+int64(s.psize)-1)/int64(s.psize)))
		st.PacksWritten += n
		st.SizeAfter += bytes[t] + int64(n)*headerSize(0) + int64(blobs[t])*recordSize
	}
	if plan.rewriteIndex {
		st.IndexRemoved = len(plan.indexFiles)
		entries := st.BlobsRepacked
		for _, p := range plan.keep {
			entries += len(p.entries)
		}
		st.IndexWritten = max(1, (entries+plan.fileBlobs-1)/plan.fileBlobs)
	}
}

func compareIDs(a, b repo.ID) int {
	for i := range a {
		if c := cmp.Compare(a[i], b[i]); c != 0 {
			return c
		}
	}
	return 0
}

// PruneProgress says how far Prune got.
type PruneProgress struct {
	Phase       string // "repack", "delete"
	Done, Total int
}

// Prune carries out plan: it repacks, writes the new index, then deletes
// the old index files and the packs nothing names any more (see the order
// above). It fills in plan.Stats with what it wrote. The store's index is
// out of date afterwards: load it again to use the repository. progress may
// be nil.
func (s *Store) Prune(ctx context.Context, plan *PrunePlan, progress func(PruneProgress)) error {
	if progress == nil {
		progress = func(PruneProgress) {}
	}
	st := &plan.Stats
	fresh, err := s.repack(ctx, plan.repack, progress)
	if err != nil {
		return err
	}
	st.PacksWritten = len(fresh)
	st.SizeAfter = 0
	for _, p := range plan.keep {
		st.SizeAfter += p.size
	}
	for _, p := range fresh {
		st.SizeAfter += p.size
	}
	// The files to delete, old index files first: once the new index is
	// written, nothing that counts names them or the packs.
	var doomed []repo.Handle
	if plan.rewriteIndex {
		entries := make([]index.PackEntries, 0, len(plan.keep)+len(fresh))
		for _, p := range plan.keep {
			entries = append(entries, index.PackEntries{Pack: p.id, Blobs: p.entries})
		}
		for _, p := range fresh {
			entries = append(entries, p.PackEntries)
		}
		written, err := writeIndex(ctx, s.r, entries, plan.indexFiles, plan.fileBlobs)
		if err != nil {
			return err
		}
		st.IndexWritten = len(written)
		for _, id := range plan.indexFiles {
			// Content addresses of files sealed with random nonces never
			// collide, but deleting a file just written would be fatal.
			if !slices.Contains(written, id) {
				doomed = append(doomed, repo.Handle{Type: repo.IndexFile, Name: id.String()})
			}
		}
	}
	st.IndexRemoved = len(doomed)
	keep := map[repo.ID]bool{}
	for _, p := range fresh {
		keep[p.Pack] = true
	}
	for _, id := range plan.remove {
		if !keep[id] {
			doomed = append(doomed, repo.Handle{Type: repo.PackFile, Name: id.String()})
		}
	}
	for i, h := range doomed {
		id, err := repo.ParseID(h.Name)
		if err == nil {
			err = s.r.RemoveFile(ctx, h.Type, id)
		}
		if err != nil {
			return fmt.Errorf("remove %s: %w", h, err)
		}
		progress(PruneProgress{Phase: "delete", Done: i + 1, Total: len(doomed)})
	}
	return nil
}

// newPack is a pack written by a repack.
type newPack struct {
	index.PackEntries
	size int64
}

// repack copies the keepers of packs into new packs, a pack per type
// filling up to the pack size. Blobs are copied as stored: the sealed
// bytes depend only on the blob's type and ID, not on the pack around them.
// Each is authenticated and checked against its ID first, so that a
// damaged copy is never the one left.
func (s *Store) repack(ctx context.Context, packs []*prunePack, progress func(PruneProgress)) ([]newPack, error) {
	var out []newPack
	var writers [2]*Writer
	defer func() {
		for _, w := range writers {
			if w != nil {
				w.Discard()
			}
		}
	}()
	flush := func(t int) error {
		w := writers[t]
		writers[t] = nil
		p, err := s.savePack(ctx, w)
		if err != nil {
			return err
		}
		out = append(out, p)
		return nil
	}
	var plain []byte
	for i, p := range packs {
		progress(PruneProgress{Phase: "repack", Done: i, Total: len(packs)})
		sealed, err := s.readBlobs(ctx, p)
		if err != nil {
			return nil, err
		}
		for j, e := range p.keepers {
			if plain, err = OpenBlob(s.key, e, sealed[j], plain); err != nil {
				return nil, fmt.Errorf("repack pack %s: %w", p.id.Short(), err)
			}
			t := int(e.Type & 1)
			if writers[t] == nil {
				if writers[t], err = s.newWriter(e.Type); err != nil {
					return nil, err
				}
			}
			writers[t].Add(e.ID, sealed[j], int(e.RawLength))
			if writers[t].Size() >= s.psize {
				if err := flush(t); err != nil {
					return nil, err
				}
			}
		}
	}
	for t, w := range writers {
		if w != nil && w.Count() > 0 {
			if err := flush(t); err != nil {
				return nil, err
			}
		}
	}
	if len(packs) > 0 {
		progress(PruneProgress{Phase: "repack", Done: len(packs), Total: len(packs)})
	}
	return out, nil
}

// readBlobs reads the sealed keepers of p (sorted by offset) in one ranged
// read, skipping what lies between them.
func (s *Store) readBlobs(ctx context.Context, p *prunePack) ([][]byte, error) {
	if len(p.keepers) == 0 {
		return nil, nil
	}
	start := int64(p.keepers[0].Offset)
	last := p.keepers[len(p.keepers)-1]
	end := int64(last.Offset) + int64(last.Length)
	if end > p.size {
		return nil, fmt.Errorf("pack %s: blob %s lies beyond its end", p.id.Short(), last.ID.Short())
	}
	h := repo.Handle{Type: repo.PackFile, Name: p.id.String()}
	var sealed [][]byte
	err := s.r.Backend().Load(ctx, h, start, end-start, func(rd io.Reader) error {
		sealed = sealed[:0] // a retried Load starts over
		pos := start
		for _, e := range p.keepers {
			off := int64(e.Offset)
			if off < pos {
				return fmt.Errorf("blob %s overlaps the blob before it", e.ID.Short())
			}
			if _, err := io.CopyN(io.Discard, rd, off-pos); err != nil {
				return err
			}
			b := make([]byte, e.Length)
			if _, err := io.ReadFull(rd, b); err != nil {
				return err
			}
			sealed = append(sealed, b)
			pos = off + int64(e.Length)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read pack %s: %w", p.id.Short(), err)
	}
	return sealed, nil
}

// savePack finishes and stores w.
func (s *Store) savePack(ctx context.Context, w *Writer) (newPack, error) {
	p, err := w.Finish(s.key)
	if err != nil {
		return newPack{}, err
	}
	defer p.Close()
	h := repo.Handle{Type: repo.PackFile, Name: p.ID.String()}
	if err := s.r.Backend().Save(ctx, h, p.Data, p.Size); err != nil {
		return newPack{}, fmt.Errorf("store pack %s: %w", p.ID.Short(), err)
	}
	if c := s.r.Cache(); c != nil && w.Type == repo.TreeBlob {
		data := make([]byte, p.Size)
		if _, err := p.Data.ReadAt(data, 0); err == nil {
			c.Put(h, data)
		}
	}
	blobs := p.Blobs
	for i := range blobs {
		blobs[i].Pack = p.ID
	}
	return newPack{PackEntries: index.PackEntries{Pack: p.ID, Blobs: blobs}, size: p.Size}, nil
}

// writeIndex writes entries as index files of at most perFile blobs each
// (more when one pack holds more). Only the last supersedes the old files:
// until it is written the old files still count, and the earlier new ones
// only repeat where blobs are, in packs that are all there. Prune and
// repair index both replace the index this way.
func writeIndex(ctx context.Context, r *repo.Repo, entries []index.PackEntries, old []repo.ID, perFile int) ([]repo.ID, error) {
	if len(entries) == 0 && len(old) == 0 {
		return nil, nil
	}
	var written []repo.ID
	save := func(f *index.File) error {
		id, err := r.SaveFile(ctx, repo.IndexFile, f.Encode())
		if err != nil {
			return fmt.Errorf("save index: %w", err)
		}
		written = append(written, id)
		return nil
	}
	var chunk []index.PackEntries
	n := 0
	for _, p := range entries {
		if n > 0 && n+len(p.Blobs) > perFile {
			if err := save(&index.File{Packs: chunk}); err != nil {
				return written, err
			}
			chunk, n = nil, 0
		}
		chunk = append(chunk, p)
		n += len(p.Blobs)
	}
	if err := save(&index.File{Supersedes: old, Packs: chunk}); err != nil {
		return written, err
	}
	return written, nil
}

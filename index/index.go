package index

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"runtime/debug"
	"sync"

	"github.com/cairn-backup/cairn/repo"
)

// FlushEvery bounds how many new blobs wait in memory before an index file
// is written, so a long backup's progress survives a crash.
const FlushEvery = 50000

type key [33]byte

func keyOf(t repo.BlobType, id repo.ID) (k key) {
	k[0] = byte(t)
	copy(k[1:], id[:])
	return k
}

// Index answers where a blob is stored. It is safe for concurrent use.
type Index struct {
	mu      sync.RWMutex
	db      *cache                  // the cache; nil when running without one
	mem     map[key]repo.PackedBlob // all entries when db is nil
	pending map[key]repo.PackedBlob // added since the last Flush
	unsaved []PackEntries           // what the next Flush writes
	files   map[repo.ID]bool        // index files merged in
}

// Options say where the cache lives.
type Options struct {
	CacheDir string // empty: no cache, everything in memory
}

// Load reads the repository's index files, through the bbolt cache in
// opts.CacheDir when one is given. A cache that cannot be locked (another
// cairn holds it) or read is bypassed, never trusted blindly.
func Load(ctx context.Context, r *repo.Repo, opts Options) (*Index, error) {
	idx := &Index{pending: map[key]repo.PackedBlob{}, files: map[repo.ID]bool{}}
	if opts.CacheDir != "" {
		db, err := openCache(filepath.Join(opts.CacheDir, r.Config().ID.String(), "index.db"))
		if err == nil {
			idx.db = db
		}
	}
	if idx.db == nil {
		idx.mem = map[key]repo.PackedBlob{}
	}
	if err := idx.sync(ctx, r); err != nil {
		idx.Close()
		return nil, err
	}
	return idx, nil
}

// Close releases the cache.
func (idx *Index) Close() error {
	if idx.db != nil {
		return idx.db.close()
	}
	return nil
}

// sync brings the lookup store up to date with the repository's index
// files. Every present file's supersedes list counts, superseded or not.
func (idx *Index) sync(ctx context.Context, r *repo.Repo) error {
	var all []repo.ID
	if err := r.ListIDs(ctx, repo.IndexFile, func(id repo.ID, _ int64) error {
		all = append(all, id)
		return nil
	}); err != nil {
		return fmt.Errorf("list index files: %w", err)
	}
	present := map[repo.ID]bool{}
	for _, id := range all {
		present[id] = true
	}
	merged := map[repo.ID][]repo.ID{} // file in the cache -> what it supersedes
	if idx.db != nil {
		var err error
		if merged, err = idx.db.files(); err != nil {
			return fmt.Errorf("read index cache: %w", err)
		}
	}
	superseded := map[repo.ID]bool{}
	for id, sup := range merged {
		if present[id] {
			for _, s := range sup {
				superseded[s] = true
			}
		}
	}
	// Only the supersedes lists of files the cache lacks are needed first;
	// their entries wait in memory only when there is no cache.
	var fresh []repo.ID
	loaded := map[repo.ID]*File{}
	for _, id := range all {
		if _, ok := merged[id]; ok {
			continue
		}
		f, err := LoadFile(ctx, r, id)
		if err != nil {
			return err
		}
		for _, s := range f.Supersedes {
			superseded[s] = true
		}
		fresh = append(fresh, id)
		if idx.db == nil {
			loaded[id] = f
		}
	}
	if idx.db == nil {
		for id, f := range loaded {
			if !superseded[id] {
				idx.mergeMem(id, f)
			}
		}
		return nil
	}
	stale := false
	for id := range merged {
		if !present[id] || superseded[id] {
			stale = true
		}
	}
	if stale {
		// Something the cache merged is gone: start over from the files.
		if err := idx.db.reset(); err != nil {
			return fmt.Errorf("reset index cache: %w", err)
		}
		merged = nil
		fresh = all
	}
	for id := range merged {
		idx.files[id] = true
	}
	var todo []repo.ID
	for _, id := range fresh {
		if !superseded[id] {
			todo = append(todo, id)
		}
	}
	return idx.mergeCache(ctx, r, todo)
}

// mergeCache adds index files to the cache, a bounded batch at a time.
func (idx *Index) mergeCache(ctx context.Context, r *repo.Repo, ids []repo.ID) error {
	if len(ids) == 0 {
		return nil
	}
	defer roomToMerge()()
	var batch []entry
	files := map[repo.ID][]byte{}
	commit := func() error {
		// The batch is handed over, not kept: the merges that follow it
		// need the memory.
		b, done := batch, files
		batch, files = nil, map[repo.ID][]byte{}
		if err := idx.db.add(ctx, b, done); err != nil {
			return fmt.Errorf("update index cache: %w", err)
		}
		idx.mu.Lock()
		for id := range done {
			idx.files[id] = true
		}
		idx.mu.Unlock()
		return nil
	}
	for _, id := range ids {
		f, err := LoadFile(ctx, r, id)
		if err != nil {
			return err
		}
		batch = appendEntries(batch, f)
		files[id] = joinIDs(f.Supersedes)
		if len(batch) >= mergeBatch {
			if err := commit(); err != nil {
				return err
			}
		}
	}
	if len(files) == 0 {
		return nil
	}
	return commit()
}

func appendEntries(batch []entry, f *File) []entry {
	n := 0
	for _, p := range f.Packs {
		n += len(p.Blobs)
	}
	// One buffer for the file's values, not one allocation per blob.
	locs := make([]byte, 0, n*maxLoc)
	for _, p := range f.Packs {
		for _, e := range p.Blobs {
			e.Pack = p.Pack
			start := len(locs)
			locs = encodeLoc(locs, e)
			batch = append(batch, entry{k: keyOf(e.Type, e.ID), v: locs[start:len(locs):len(locs)]})
		}
	}
	return batch
}

// mergeMem adds a loaded index file's entries to the in-memory store.
func (idx *Index) mergeMem(id repo.ID, f *File) {
	idx.mu.Lock()
	defer idx.mu.Unlock()
	idx.files[id] = true
	for _, p := range f.Packs {
		for _, e := range p.Blobs {
			e.Pack = p.Pack
			idx.mem[keyOf(e.Type, e.ID)] = e
		}
	}
}

// LoadFile loads and decodes index/<id>.
func LoadFile(ctx context.Context, r *repo.Repo, id repo.ID) (*File, error) {
	b, err := r.LoadFile(ctx, repo.IndexFile, id)
	if err != nil {
		return nil, err
	}
	f, err := DecodeFile(b)
	if err != nil {
		return nil, fmt.Errorf("index %s: %w", id.Short(), err)
	}
	return f, nil
}

// maxLoc is the longest encodeLoc: a pack ID and three 32-bit uvarints.
const maxLoc = 32 + 3*binary.MaxVarintLen32

func encodeLoc(b []byte, e repo.PackedBlob) []byte {
	b = append(b, e.Pack[:]...)
	b = binary.AppendUvarint(b, uint64(e.Offset))
	b = binary.AppendUvarint(b, uint64(e.Length))
	return binary.AppendUvarint(b, uint64(e.RawLength))
}

func decodeLoc(k key, v []byte) (repo.PackedBlob, bool) {
	d := decoder{b: v}
	e := repo.PackedBlob{Type: repo.BlobType(k[0])}
	copy(e.ID[:], k[1:])
	e.Pack = d.id()
	e.Offset, e.Length, e.RawLength = d.u32(), d.u32(), d.u32()
	return e, d.err == nil
}

func joinIDs(ids []repo.ID) []byte {
	b := make([]byte, 0, 32*len(ids))
	for _, id := range ids {
		b = append(b, id[:]...)
	}
	return b
}

func splitIDs(b []byte) []repo.ID {
	var ids []repo.ID
	for len(b) >= 32 {
		var id repo.ID
		copy(id[:], b)
		ids = append(ids, id)
		b = b[32:]
	}
	return ids
}

// Lookup returns where blob id of type t is stored.
func (idx *Index) Lookup(t repo.BlobType, id repo.ID) (repo.PackedBlob, bool) {
	k := keyOf(t, id)
	idx.mu.RLock()
	e, ok := idx.pending[k]
	if !ok && idx.mem != nil {
		e, ok = idx.mem[k]
	}
	idx.mu.RUnlock()
	if ok || idx.db == nil {
		return e, ok
	}
	var buf [maxLoc]byte
	if v, found := idx.db.get(k, buf[:0]); found {
		e, ok = decodeLoc(k, v)
	}
	return e, ok
}

// Has reports whether blob id of type t is stored.
func (idx *Index) Has(t repo.BlobType, id repo.ID) bool {
	_, ok := idx.Lookup(t, id)
	return ok
}

// Add records a pack that was just stored. Its blobs are visible to Lookup
// at once and written to an index file by the next Flush.
func (idx *Index) Add(pack repo.ID, blobs []repo.PackedBlob) {
	idx.mu.Lock()
	defer idx.mu.Unlock()
	for i := range blobs {
		blobs[i].Pack = pack
		idx.pending[keyOf(blobs[i].Type, blobs[i].ID)] = blobs[i]
	}
	idx.unsaved = append(idx.unsaved, PackEntries{Pack: pack, Blobs: blobs})
}

// Unsaved returns how many added blobs no index file names yet.
func (idx *Index) Unsaved() int {
	idx.mu.RLock()
	defer idx.mu.RUnlock()
	n := 0
	for _, p := range idx.unsaved {
		n += len(p.Blobs)
	}
	return n
}

// Flush writes an index file naming every pack added since the last Flush.
func (idx *Index) Flush(ctx context.Context, r *repo.Repo) error {
	idx.mu.Lock()
	packs := idx.unsaved
	idx.unsaved = nil
	idx.mu.Unlock()
	if len(packs) == 0 {
		return nil
	}
	f := &File{Packs: packs}
	id, err := r.SaveFile(ctx, repo.IndexFile, f.Encode())
	if err != nil {
		idx.mu.Lock()
		idx.unsaved = append(packs, idx.unsaved...)
		idx.mu.Unlock()
		return fmt.Errorf("save index: %w", err)
	}
	if idx.db == nil {
		idx.mergeMem(id, f)
	} else if err := idx.db.add(ctx, appendEntries(nil, f), map[repo.ID][]byte{id: joinIDs(f.Supersedes)}); err != nil {
		return fmt.Errorf("update index cache: %w", err)
	} else {
		idx.mu.Lock()
		idx.files[id] = true
		idx.mu.Unlock()
	}
	idx.mu.Lock()
	for _, p := range packs {
		for _, e := range p.Blobs {
			delete(idx.pending, keyOf(e.Type, e.ID))
		}
	}
	idx.mu.Unlock()
	return nil
}

// Each calls fn for every known blob (pending ones included), in no order.
func (idx *Index) Each(fn func(repo.PackedBlob) error) error {
	idx.mu.RLock()
	var list []repo.PackedBlob
	for _, e := range idx.pending {
		list = append(list, e)
	}
	for _, e := range idx.mem {
		list = append(list, e)
	}
	idx.mu.RUnlock()
	for _, e := range list {
		if err := fn(e); err != nil {
			return err
		}
	}
	if idx.db == nil {
		return nil
	}
	return idx.db.each(func(k key, v []byte) error {
		e, ok := decodeLoc(k, v)
		if !ok {
			return errors.New("index cache: bad entry")
		}
		return fn(e)
	})
}

// Files returns the index files merged in.
func (idx *Index) Files() []repo.ID {
	idx.mu.RLock()
	defer idx.mu.RUnlock()
	ids := make([]repo.ID, 0, len(idx.files))
	for id := range idx.files {
		ids = append(ids, id)
	}
	return ids
}

// roomToMerge raises the soft memory limit (cmd/cairn sets one for backups)
// by 64 MiB until the returned function is called. A large merge's working
// set, a batch of entries and the Bloom filters of the segments being
// merged, comes near that limit, where the collector runs without pause:
// merging 10 million blobs took 30% more CPU under 72 MiB than under 80.
func roomToMerge() func() {
	const room = 64 << 20
	old := debug.SetMemoryLimit(-1)
	if old > math.MaxInt64-room {
		return func() {}
	}
	debug.SetMemoryLimit(old + room)
	return func() { debug.SetMemoryLimit(old) }
}

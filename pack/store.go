package pack

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/cairn-backup/cairn/crypto"
	"github.com/cairn-backup/cairn/index"
	"github.com/cairn-backup/cairn/repo"
	"golang.org/x/sync/errgroup"
)

// Store saves and loads blobs. SaveBlob may be called from many goroutines;
// the calling goroutine does the hashing, compression and encryption, so the
// work spreads over as many cores as there are callers.
type Store struct {
	r     *repo.Repo
	idx   *index.Index
	key   *crypto.Key
	comp  repo.Compression
	psize int

	mu       sync.Mutex
	inflight map[[33]byte]struct{} // saved by a caller, pack not yet stored
	packers  map[packer]*Writer
	uploads  chan *Writer // nil outside WithUploader
	stats    Stats
	dryRun   bool

	tempDir     string // for data packs being filled; empty: the system's
	connections int    // packs stored at once
}

// packer names a pack being filled: one per blob type and lane.
type packer struct {
	t    repo.BlobType
	lane int
}

// Stats counts what SaveBlob stored.
type Stats struct {
	Blobs      [2]int   // new blobs per type
	RawBytes   [2]int64 // their plaintext bytes
	PackedSize [2]int64 // their stored bytes
	Packs      int
}

// Options tune a Store; zero values take defaults.
type Options struct {
	Uploaders int // packs stored at once (default: SetConnections, else 2)
}

// NewStore returns a Store over r with index idx.
func NewStore(r *repo.Repo, idx *index.Index) *Store {
	cfg := r.Config()
	s := &Store{r: r, idx: idx, key: r.Key(), comp: cfg.Compression, psize: cfg.PackSize,
		inflight: map[[33]byte]struct{}{}, packers: map[packer]*Writer{}, connections: 2}
	// A backend with a directory of its own for temporary files (a local
	// repository) gets its packs filled there, ready to be linked in.
	s.tempDir = repo.TempDirOf(r.Backend())
	return s
}

// Index returns the store's index.
func (s *Store) Index() *index.Index { return s.idx }

// Repo returns the store's repository.
func (s *Store) Repo() *repo.Repo { return s.r }

// Stats returns what has been stored so far.
func (s *Store) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// SetConnections sets how many packs WithUploader stores at once.
func (s *Store) SetConnections(n int) {
	s.mu.Lock()
	s.connections = n
	s.mu.Unlock()
}

// SetDryRun makes SaveBlob count new blobs without storing them.
func (s *Store) SetDryRun(on bool) {
	s.mu.Lock()
	s.dryRun = on
	s.mu.Unlock()
}

// WithUploader runs fn while packs can be stored, then stores the partial
// packs and writes the index, so every blob saved inside fn is durable and
// findable when it returns nil. Packs stored before an error are indexed too:
// a later backup reuses them.
func (s *Store) WithUploader(ctx context.Context, opts Options, fn func(context.Context) error) error {
	if opts.Uploaders <= 0 {
		opts.Uploaders = max(1, s.connections)
	}
	wg, wctx := errgroup.WithContext(ctx)
	uploads := make(chan *Writer)
	s.mu.Lock()
	s.uploads = uploads
	s.mu.Unlock()
	for range opts.Uploaders {
		wg.Go(func() error {
			for w := range uploads {
				if err := s.store(wctx, w); err != nil {
					return err
				}
			}
			return nil
		})
	}
	fnErr := func() error {
		err := fn(wctx)
		s.mu.Lock()
		partial := make([]*Writer, 0, len(s.packers))
		for _, w := range s.packers {
			partial = append(partial, w)
		}
		clear(s.packers)
		s.mu.Unlock()
		if err != nil {
			// Blobs in unfinished packs were never stored.
			for _, w := range partial {
				s.forget(w)
			}
			return err
		}
		// Hand the partial packs to the uploaders.
		for i, w := range partial {
			if w.Count() == 0 {
				continue
			}
			if err := s.send(wctx, w); err != nil {
				for _, w := range partial[i+1:] {
					s.forget(w)
				}
				return err
			}
		}
		return nil
	}()
	s.mu.Lock()
	s.uploads = nil
	s.mu.Unlock()
	close(uploads)
	upErr := wg.Wait()
	// The index gets what was stored, even after a failure (a background
	// context: an interrupt must not lose the record of stored packs).
	idxErr := s.idx.Flush(context.WithoutCancel(ctx), s.r)
	return errors.Join(fnErr, upErr, idxErr)
}

func (s *Store) send(ctx context.Context, w *Writer) error {
	s.mu.Lock()
	ch := s.uploads
	s.mu.Unlock()
	if ch == nil {
		s.forget(w)
		return errors.New("pack store: SaveBlob outside WithUploader")
	}
	select {
	case ch <- w:
		return nil
	case <-ctx.Done():
		s.forget(w)
		return ctx.Err()
	}
}

// forget drops the inflight marks of a pack that will not be stored, so its
// blobs are not reported as known by a later SaveBlob.
func (s *Store) forget(w *Writer) {
	w.Discard()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, b := range w.blobs {
		delete(s.inflight, inflightKey(b.Type, b.ID))
	}
}

func (s *Store) forgetKey(k [33]byte) {
	s.mu.Lock()
	delete(s.inflight, k)
	s.mu.Unlock()
}

func (s *Store) store(ctx context.Context, w *Writer) error {
	p, err := w.Finish(s.key)
	if err != nil {
		s.forget(w)
		return err
	}
	defer p.Close()
	h := repo.Handle{Type: repo.PackFile, Name: p.ID.String()}
	if err := s.r.Backend().Save(ctx, h, p.Data, p.Size); err != nil {
		s.forget(w)
		return fmt.Errorf("store pack %s: %w", p.ID.Short(), err)
	}
	if c := s.r.Cache(); c != nil && w.Type == repo.TreeBlob {
		// The next backup walks these trees again: keep them at hand.
		data := make([]byte, p.Size)
		if _, err := p.Data.ReadAt(data, 0); err == nil {
			c.Put(h, data)
		}
	}
	s.idx.Add(p.ID, p.Blobs)
	s.mu.Lock()
	for _, b := range p.Blobs {
		delete(s.inflight, inflightKey(b.Type, b.ID))
	}
	s.stats.Packs++
	s.mu.Unlock()
	if s.idx.Unsaved() >= index.FlushEvery {
		return s.idx.Flush(ctx, s.r)
	}
	return nil
}

// newWriter starts a pack of type t. Data packs go to a temporary file,
// so the packs in flight cost no heap; tree packs rarely fill and grow from
// a small buffer. A pack filled in the repository's own directory is linked
// in, never read back: it goes past the page cache.
func (s *Store) newWriter(t repo.BlobType) (*Writer, error) {
	if t == repo.TreeBlob {
		return NewWriter(t, make([]byte, 0, 64<<10)), nil
	}
	return NewFileWriter(t, s.tempDir, s.tempDir != "")
}

func inflightKey(t repo.BlobType, id repo.ID) (k [33]byte) {
	k[0] = byte(t)
	copy(k[1:], id[:])
	return k
}

var scratch = sync.Pool{New: func() any { return new([]byte) }}

// SaveBlob stores data as a blob of type t unless the repository has it.
// known reports that it was there already.
func (s *Store) SaveBlob(ctx context.Context, t repo.BlobType, data []byte) (id repo.ID, known bool, err error) {
	return s.SaveBlobIn(ctx, 0, t, data)
}

// SaveBlobIn is SaveBlob with the blob packed in lane's own pack. Callers
// that each save a stream of their own (a backup's walkers, each in its part
// of the tree) keep every stream together in packs, in the order a restore
// reads it; in one shared pack the streams would alternate blob by blob.
func (s *Store) SaveBlobIn(ctx context.Context, lane int, t repo.BlobType, data []byte) (id repo.ID, known bool, err error) {
	id = repo.ID(s.key.BlobID(data))
	if s.idx.Has(t, id) {
		return id, true, nil
	}
	k := inflightKey(t, id)
	s.mu.Lock()
	if _, ok := s.inflight[k]; ok {
		s.mu.Unlock()
		return id, true, nil
	}
	if s.dryRun {
		// Counted once (the inflight mark stays), never stored.
		s.inflight[k] = struct{}{}
		s.stats.Blobs[t]++
		s.stats.RawBytes[t] += int64(len(data))
		s.mu.Unlock()
		return id, false, nil
	}
	s.inflight[k] = struct{}{}
	s.mu.Unlock()
	// A pack stored between Has and the inflight mark: Has again.
	if s.idx.Has(t, id) {
		s.mu.Lock()
		delete(s.inflight, k)
		s.mu.Unlock()
		return id, true, nil
	}

	// Encoded after room for the nonce and sealed in place: one buffer.
	sealp := scratch.Get().(*[]byte)
	defer scratch.Put(sealp)
	comp := s.comp
	if t == repo.TreeBlob {
		comp = repo.CompressAuto
	}
	*sealp = repo.Encode(append((*sealp)[:0], make([]byte, crypto.NonceSize)...), data, comp)
	*sealp = s.key.SealInPlace(*sealp, repo.BlobAD(t, id))

	pk := packer{t, lane}
	s.mu.Lock()
	w := s.packers[pk]
	if w == nil {
		if w, err = s.newWriter(t); err != nil {
			s.mu.Unlock()
			s.forgetKey(k)
			return id, false, err
		}
		s.packers[pk] = w
	}
	w.Add(id, *sealp, len(data))
	s.stats.Blobs[t]++
	s.stats.RawBytes[t] += int64(len(data))
	s.stats.PackedSize[t] += int64(len(*sealp))
	full := w.Size() >= s.psize
	if full {
		delete(s.packers, pk)
	}
	s.mu.Unlock()
	if full {
		if err := s.send(ctx, w); err != nil {
			return id, false, err
		}
	}
	return id, false, nil
}

// ErrBlobNotFound means the index has no such blob.
var ErrBlobNotFound = errors.New("blob not in index")

// LoadBlob reads, authenticates, decompresses and verifies blob id, appending
// its plaintext to buf[:0].
func (s *Store) LoadBlob(ctx context.Context, t repo.BlobType, id repo.ID, buf []byte) ([]byte, error) {
	e, ok := s.idx.Lookup(t, id)
	if !ok {
		return nil, fmt.Errorf("%s blob %s: %w", t, id.Short(), ErrBlobNotFound)
	}
	h := repo.Handle{Type: repo.PackFile, Name: e.Pack.String()}
	if c := s.r.Cache(); c != nil && t == repo.TreeBlob {
		if plain, err := s.loadCached(ctx, c, h, e, buf); err == nil {
			return plain, nil
		}
		// A damaged copy or a failed download: the repository decides.
	}
	encp := scratch.Get().(*[]byte)
	defer scratch.Put(encp)
	sealed, err := repo.ReadAt(ctx, s.r.Backend(), h, int64(e.Offset), int(e.Length), *encp)
	if err != nil {
		return nil, fmt.Errorf("read %s blob %s from pack %s: %w", t, id.Short(), e.Pack.Short(), err)
	}
	*encp = sealed
	return OpenBlob(s.key, e, sealed, buf)
}

// loadCached reads a blob from the cached copy of its pack, downloading the
// whole pack first when there is none: tree packs are small, and the next
// directory's tree is usually in the same one.
func (s *Store) loadCached(ctx context.Context, c *repo.FileCache, h repo.Handle, e repo.PackedBlob, buf []byte) ([]byte, error) {
	// A walk reads a tree per directory: the sealed bytes go to a pooled
	// buffer, decrypted where they lie.
	sealp := scratch.Get().(*[]byte)
	defer scratch.Put(sealp)
	sealed := slices.Grow((*sealp)[:0], int(e.Length))[:e.Length]
	*sealp = sealed
	if ok, err := c.ReadAt(h, sealed, int64(e.Offset)); ok {
		if err != nil {
			c.Remove(h)
			return nil, err
		}
		plain, err := OpenBlobInPlace(s.key, e, sealed, buf)
		if err != nil {
			c.Remove(h)
		}
		return plain, err
	}
	data, err := repo.ReadAll(ctx, s.r.Backend(), h)
	if err != nil {
		return nil, err
	}
	if repo.ID(crypto.Hash(data)) != e.Pack {
		return nil, fmt.Errorf("pack %s: content does not match its id", e.Pack.Short())
	}
	if int64(e.Offset)+int64(e.Length) > int64(len(data)) {
		return nil, fmt.Errorf("pack %s: blob beyond its end", e.Pack.Short())
	}
	c.Put(h, data)
	return OpenBlob(s.key, e, data[e.Offset:e.Offset+e.Length], buf)
}

// OpenBlob decrypts and checks one sealed blob described by e.
func OpenBlob(key *crypto.Key, e repo.PackedBlob, sealed, buf []byte) ([]byte, error) {
	encp := scratch.Get().(*[]byte)
	defer scratch.Put(encp)
	plain, enc, err := openBlob(key, e, (*encp)[:0], sealed, buf)
	*encp = enc
	return plain, err
}

// OpenBlobInPlace is OpenBlob decrypting into sealed itself, which it
// overwrites: a restore has no further use for the sealed bytes and saves a
// buffer the size of a blob per worker.
func OpenBlobInPlace(key *crypto.Key, e repo.PackedBlob, sealed, buf []byte) ([]byte, error) {
	if len(sealed) < crypto.NonceSize {
		return OpenBlob(key, e, sealed, buf)
	}
	plain, _, err := openBlob(key, e, sealed[crypto.NonceSize:crypto.NonceSize], sealed, buf)
	return plain, err
}

// openBlob decrypts sealed into encBuf, decodes into buf and checks the
// result against e.
func openBlob(key *crypto.Key, e repo.PackedBlob, encBuf, sealed, buf []byte) (plain, enc []byte, err error) {
	enc, err = key.Open(encBuf, sealed, repo.BlobAD(e.Type, e.ID))
	if err != nil {
		return nil, encBuf, fmt.Errorf("%s blob %s in pack %s: %w", e.Type, e.ID.Short(), e.Pack.Short(), err)
	}
	plain, err = repo.Decode(buf[:0], enc, int(e.RawLength))
	if err != nil {
		return nil, enc, fmt.Errorf("%s blob %s in pack %s: %w", e.Type, e.ID.Short(), e.Pack.Short(), err)
	}
	if len(plain) != int(e.RawLength) || repo.ID(key.BlobID(plain)) != e.ID {
		return nil, enc, fmt.Errorf("%s blob %s in pack %s: content does not match its id", e.Type, e.ID.Short(), e.Pack.Short())
	}
	return plain, enc, nil
}

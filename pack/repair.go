package pack

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/cairn-backup/cairn/index"
	"github.com/cairn-backup/cairn/repo"
	"golang.org/x/sync/errgroup"
)

// RebuildOptions tune RebuildIndex.
type RebuildOptions struct {
	// ReadData downloads every pack whole. A damaged pack (content that
	// does not match its name, a blob that does not authenticate, a header
	// that does not decode) has its intact blobs copied to new packs and is
	// then removed; its header, or else the old index, says where they are.
	ReadData bool
	// Connections is how many packs are read at once (default 4).
	Connections int
	// Report hears one line for each pack left out, damaged or removed and
	// each blob lost. It may be called from several goroutines at once.
	Report func(msg string)
	// Progress hears how many packs have been read, of how many.
	Progress func(done, total int)
}

// RebuildResult says what RebuildIndex did.
type RebuildResult struct {
	Packs, Blobs int       // in the new index
	Added        int       // stored packs the new index names and the old one did not
	Dropped      int       // packs the old index named that are gone or unreadable
	LeftOut      []repo.ID // stored packs whose header could not be read, left in place
	Removed      []repo.ID // damaged packs whose intact blobs were copied, then removed
	NewPacks     int       // packs written with the copied blobs
	BlobsLost    int       // blobs of damaged packs that could not be read
	OldIndexes   int       // index files replaced (and removed)
	NewIndexes   int
}

// packState is what reading one pack found.
type packState struct {
	blobs   []repo.PackedBlob // its header, when the pack is usable as it is
	layout  []repo.PackedBlob // damaged: where its blobs are thought to be
	damaged bool
	leftOut bool
}

// RebuildIndex replaces every index file with new ones made from the
// headers of the stored packs, as they are: a pack no index named is added,
// and a pack that is gone or whose header cannot be read is left out, so
// any blob only it held is missing afterwards. The caller must hold the
// exclusive lock.
//
// The new files are written before the old ones are removed, and only the
// last of them supersedes the old ones, so a crash at any point leaves an
// index that names every pack the old one did, or the new one complete.
func RebuildIndex(ctx context.Context, r *repo.Repo, opts RebuildOptions) (RebuildResult, error) {
	var res RebuildResult
	if opts.Connections <= 0 {
		opts.Connections = 4
	}
	var reportMu sync.Mutex
	report := func(format string, args ...any) {
		if opts.Report != nil {
			reportMu.Lock()
			opts.Report(fmt.Sprintf(format, args...))
			reportMu.Unlock()
		}
	}

	// The old index: what is replaced, and where the blobs of a pack with
	// a damaged header were.
	var oldFiles []repo.ID
	if err := r.ListIDs(ctx, repo.IndexFile, func(id repo.ID, _ int64) error {
		oldFiles = append(oldFiles, id)
		return nil
	}); err != nil {
		return res, fmt.Errorf("list index files: %w", err)
	}
	old := map[repo.ID][]repo.PackedBlob{}
	for _, id := range oldFiles {
		f, err := index.LoadFile(ctx, r, id)
		if err != nil {
			if ctx.Err() != nil {
				return res, ctx.Err()
			}
			report("index %s cannot be read (%v); it is replaced all the same", id.Short(), err)
			continue
		}
		for _, p := range f.Packs {
			for _, b := range p.Blobs {
				b.Pack = p.Pack
				old[p.Pack] = append(old[p.Pack], b)
			}
		}
	}

	sizes := map[repo.ID]int64{}
	var ids []repo.ID
	if err := r.ListIDs(ctx, repo.PackFile, func(id repo.ID, size int64) error {
		sizes[id] = size
		ids = append(ids, id)
		return nil
	}); err != nil {
		return res, fmt.Errorf("list packs: %w", err)
	}
	slices.SortFunc(ids, func(a, b repo.ID) int { return bytes.Compare(a[:], b[:]) })

	states := make([]packState, len(ids))
	var done atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(opts.Connections)
	for i, id := range ids {
		g.Go(func() error {
			st, err := examinePack(gctx, r, id, sizes[id], old[id], opts.ReadData, report)
			if err != nil {
				// Leaving out a pack that could not be read would lose blobs
				// that may be intact: stop, and change nothing.
				return err
			}
			states[i] = st
			if opts.Progress != nil {
				opts.Progress(int(done.Add(1)), len(ids))
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return res, err
	}

	var packs []index.PackEntries
	have := map[[33]byte]bool{}
	for i, id := range ids {
		st := states[i]
		if st.damaged || st.leftOut {
			continue
		}
		packs = append(packs, index.PackEntries{Pack: id, Blobs: st.blobs})
		for _, b := range st.blobs {
			have[salvageKey(b)] = true
		}
	}

	// Copy the intact blobs of damaged packs that no intact pack holds.
	var salvaged []repo.ID
	if opts.ReadData {
		s := &salvager{r: r, have: have}
		for i, id := range ids {
			st := states[i]
			if !st.damaged {
				continue
			}
			lost, err := s.copyFrom(ctx, id, st.layout, func(b repo.PackedBlob, err error) {
				report("%v: the blob is lost", err)
			})
			if err != nil {
				return res, err
			}
			res.BlobsLost += lost
			salvaged = append(salvaged, id)
		}
		if err := s.flush(ctx); err != nil {
			return res, err
		}
		packs = append(packs, s.packs...)
		res.NewPacks = len(s.packs)
	}

	written, err := writeIndex(ctx, r, packs, oldFiles, index.FlushEvery)
	if err != nil {
		return res, err
	}
	res.NewIndexes = len(written)
	res.OldIndexes = len(oldFiles)
	for _, id := range oldFiles {
		if err := r.RemoveFile(ctx, repo.IndexFile, id); err != nil {
			return res, fmt.Errorf("remove replaced index %s: %w", id.Short(), err)
		}
	}
	for _, id := range salvaged {
		if err := r.Backend().Remove(ctx, repo.Handle{Type: repo.PackFile, Name: id.String()}); err != nil {
			return res, fmt.Errorf("remove damaged pack %s: %w", id.Short(), err)
		}
		res.Removed = append(res.Removed, id)
		report("pack %s is damaged: its intact blobs were copied to new packs and it was removed", id.Short())
	}

	named := map[repo.ID]bool{}
	for i, p := range packs {
		named[p.Pack] = true
		res.Packs++
		res.Blobs += len(p.Blobs)
		// The packs after the stored ones are new, made of copied blobs.
		if _, ok := old[p.Pack]; !ok && i < len(packs)-res.NewPacks {
			res.Added++
		}
	}
	for id := range old {
		if !named[id] && !slices.Contains(salvaged, id) {
			res.Dropped++
		}
	}
	for i, id := range ids {
		if states[i].leftOut {
			res.LeftOut = append(res.LeftOut, id)
		}
	}
	return res, nil
}

func salvageKey(b repo.PackedBlob) (k [33]byte) {
	k[0] = byte(b.Type)
	copy(k[1:], b.ID[:])
	return k
}

// examinePack reads pack id's header and, with readData, all of it. An
// error means the pack could not be read; damage is in the state.
func examinePack(ctx context.Context, r *repo.Repo, id repo.ID, size int64, old []repo.PackedBlob, readData bool,
	report func(string, ...any)) (packState, error) {
	hdr, err := LoadHeader(ctx, r.Backend(), r.Key(), id, size)
	var damage *DamageError
	switch {
	case errors.Is(err, repo.ErrNotFound):
		report("pack %s vanished while the index was rebuilt; left out", id.Short())
		return packState{leftOut: true}, nil
	case err != nil && !errors.As(err, &damage):
		return packState{}, err
	case err != nil && (!readData || len(old) == 0):
		report("%v; the pack is left out of the index (and in place): any blob only it held is now missing", err)
		return packState{leftOut: true}, nil
	case !readData:
		return packState{blobs: hdr}, nil
	}
	layout := hdr
	if err != nil {
		// The old index still says where the blobs were.
		report("%v; its blobs are read where the old index says they are", err)
		layout = slices.Clone(old)
		slices.SortFunc(layout, func(a, b repo.PackedBlob) int { return cmp.Compare(a.Offset, b.Offset) })
	}
	bad := 0
	c, rerr := ReadPack(ctx, r.Backend(), r.Key(), id, layout, func(_ repo.PackedBlob, _ []byte, err error) error {
		if err != nil {
			bad++
		}
		return nil
	})
	if errors.Is(rerr, repo.ErrNotFound) {
		report("pack %s vanished while the index was rebuilt; left out", id.Short())
		return packState{leftOut: true}, nil
	}
	if rerr != nil {
		return packState{}, rerr
	}
	if err == nil && bad == 0 && c.Hash == id {
		return packState{blobs: hdr}, nil
	}
	switch {
	case bad > 0:
		report("pack %s is damaged: %d of its %d blobs cannot be read", id.Short(), bad, len(layout))
	case err == nil:
		report("pack %s is damaged: its content does not match its name", id.Short())
	}
	return packState{layout: layout, damaged: true}, nil
}

// salvager copies intact blobs of damaged packs into new packs.
type salvager struct {
	r       *repo.Repo
	have    map[[33]byte]bool // blobs an intact or new pack holds
	writers [2]*Writer
	packs   []index.PackEntries
}

// copyFrom reads damaged pack id and copies each of its blobs that is
// intact and held nowhere else; it returns how many it could not read.
func (s *salvager) copyFrom(ctx context.Context, id repo.ID, layout []repo.PackedBlob, lost func(repo.PackedBlob, error)) (int, error) {
	n := 0
	_, err := ReadPack(ctx, s.r.Backend(), s.r.Key(), id, layout, func(b repo.PackedBlob, sealed []byte, err error) error {
		k := salvageKey(b)
		if s.have[k] {
			return nil // another pack has it
		}
		if err != nil {
			lost(b, err)
			n++
			return nil
		}
		w := s.writers[b.Type]
		if w == nil {
			w = NewWriter(b.Type, nil)
			s.writers[b.Type] = w
		}
		// Sealed blobs are bound to their type and ID, not to a pack: they
		// move as they are.
		w.Add(b.ID, sealed, int(b.RawLength))
		s.have[k] = true
		if w.Size() >= s.r.Config().PackSize {
			s.writers[b.Type] = nil
			return s.store(ctx, w)
		}
		return nil
	})
	if err != nil {
		return n, fmt.Errorf("copy blobs of damaged pack %s: %w", id.Short(), err)
	}
	return n, nil
}

func (s *salvager) flush(ctx context.Context) error {
	for t, w := range s.writers {
		s.writers[t] = nil
		if w != nil && w.Count() > 0 {
			if err := s.store(ctx, w); err != nil {
				return err
			}
		}
	}
	return nil
}

func (s *salvager) store(ctx context.Context, w *Writer) error {
	p, err := w.Finish(s.r.Key())
	if err != nil {
		return err
	}
	defer p.Close()
	if err := s.r.Backend().Save(ctx, repo.Handle{Type: repo.PackFile, Name: p.ID.String()}, p.Data, p.Size); err != nil {
		return fmt.Errorf("store pack %s: %w", p.ID.Short(), err)
	}
	for i := range p.Blobs {
		p.Blobs[i].Pack = p.ID
	}
	s.packs = append(s.packs, index.PackEntries{Pack: p.ID, Blobs: p.Blobs})
	return nil
}

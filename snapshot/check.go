package snapshot

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/cairn-backup/cairn/crypto"
	"github.com/cairn-backup/cairn/index"
	"github.com/cairn-backup/cairn/pack"
	"github.com/cairn-backup/cairn/repo"
	"golang.org/x/sync/errgroup"
)

// CheckOptions choose what Check reads.
type CheckOptions struct {
	// ReadData downloads the packs Subset selects, each once, and verifies
	// every blob in them: authentication, decompression and ID.
	ReadData bool
	Subset   Subset
	// Connections is how many packs are read at once (default 4).
	Connections int
	// Report hears each problem as it is found. It is called from one
	// goroutine at a time.
	Report func(CheckIssue)
	// Progress hears how far a phase has come. It is called from one
	// goroutine at a time.
	Progress func(CheckProgress)
}

// CheckIssue is one problem Check found.
type CheckIssue struct {
	// Note marks what is worth knowing but harms nothing (a pack no index
	// names, left by an interrupted backup).
	Note    bool
	Message string // one line naming the object: pack, blob, snapshot, tree, path
}

// CheckProgress says what Check is doing.
type CheckProgress struct {
	Phase       string // "index", "packs", "snapshots", "headers" or "data", in this order
	Done, Total int    // packs (headers, data) or trees (snapshots) so far
	Bytes       int64  // bytes downloaded by the data phase
}

// CheckResult counts what Check looked at and found.
type CheckResult struct {
	IndexFiles int
	Packs      int // packs the index names
	Blobs      int // distinct blobs the index names
	Snapshots  int
	Trees      int
	PacksRead  int // downloaded whole (ReadData)
	BlobsRead  int
	BytesRead  int64
	Errors     int
	Notes      int
}

// Subset selects the packs of a partial data check (restic's
// --read-data-subset): the n-th of t groups, by pack ID, or a random P%.
// The zero value selects every pack.
type Subset struct {
	N, T    int
	Percent float64
}

// ParseSubset reads "n/t" (1 ≤ n ≤ t ≤ 256) or "P%" (0 < P ≤ 100).
func ParseSubset(s string) (Subset, error) {
	if p, ok := strings.CutSuffix(s, "%"); ok {
		v, err := strconv.ParseFloat(p, 64)
		if err != nil || v <= 0 || v > 100 {
			return Subset{}, fmt.Errorf("invalid subset %q: want a percentage above 0 and at most 100", s)
		}
		return Subset{Percent: v}, nil
	}
	ns, ts, ok := strings.Cut(s, "/")
	n, err1 := strconv.Atoi(ns)
	t, err2 := strconv.Atoi(ts)
	if !ok || err1 != nil || err2 != nil {
		return Subset{}, fmt.Errorf("invalid subset %q: want n/t or P%%", s)
	}
	// Groups are chosen by the first byte of the pack ID.
	if t < 1 || t > 256 || n < 1 || n > t {
		return Subset{}, fmt.Errorf("invalid subset %q: want 1 ≤ n ≤ t ≤ 256", s)
	}
	return Subset{N: n, T: t}, nil
}

func (s Subset) String() string {
	switch {
	case s.T > 0:
		return fmt.Sprintf("%d/%d", s.N, s.T)
	case s.Percent > 0:
		return strconv.FormatFloat(s.Percent, 'f', -1, 64) + "%"
	}
	return "all"
}

// choose returns the packs of ids (sorted) that s selects. A random subset
// holds at least one pack, as long as there is one.
func (s Subset) choose(ids []repo.ID) []repo.ID {
	switch {
	case s.T > 0:
		var out []repo.ID
		for _, id := range ids {
			if int(id[0])%s.T == s.N-1 {
				out = append(out, id)
			}
		}
		return out
	case s.Percent > 0:
		n := int(float64(len(ids)) * s.Percent / 100)
		if n < 1 && len(ids) > 0 {
			n = 1
		}
		out := slices.Clone(ids)
		rand.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
		out = out[:n]
		slices.SortFunc(out, byID)
		return out
	}
	return ids
}

func byID(a, b repo.ID) int { return bytes.Compare(a[:], b[:]) }

type checkBlobKey [33]byte

func checkKey(t repo.BlobType, id repo.ID) (k checkBlobKey) {
	k[0] = byte(t)
	copy(k[1:], id[:])
	return k
}

type indexedPack struct {
	blobs []repo.PackedBlob // sorted by offset
	file  repo.ID           // the index file that names it
}

type checker struct {
	r    *repo.Repo
	opts CheckOptions
	res  CheckResult

	mu        sync.Mutex // Report and Progress calls, res.Errors and res.Notes
	snapshots []*Snapshot
	stored    map[repo.ID]int64
	packs     map[repo.ID]*indexedPack
	blobs     map[checkBlobKey]repo.PackedBlob   // one copy, in a stored pack if there is one
	copies    map[checkBlobKey][]repo.PackedBlob // further copies, until the packs are listed
}

// Check verifies the repository's structure: index files decrypt and
// decode; every pack they name exists, has the size they imply, and its
// header lists the same blobs; every snapshot decodes; every tree reachable
// from a snapshot loads, and every blob it references is indexed in a pack
// that exists. With opts.ReadData it also reads the selected packs whole.
// Problems go to opts.Report; the returned error means the check itself
// could not go on (a listing failed, or ctx ended).
//
// Check reads what is stored: r should have no file cache, whose verified
// copies could hide damage in the repository. The caller holds a lock.
func Check(ctx context.Context, r *repo.Repo, opts CheckOptions) (CheckResult, error) {
	if opts.Connections <= 0 {
		opts.Connections = 4
	}
	c := &checker{r: r, opts: opts, stored: map[repo.ID]int64{},
		packs: map[repo.ID]*indexedPack{}, blobs: map[checkBlobKey]repo.PackedBlob{},
		copies: map[checkBlobKey][]repo.PackedBlob{}}
	// Snapshots, then index files, then packs: a backup running meanwhile
	// writes them in the opposite order, so whatever is seen of it is
	// complete, but for packs no index names yet (notes, not errors).
	steps := []func(context.Context) error{c.loadSnapshots, c.loadIndex, c.listPacks, c.checkPackFiles, c.checkTrees, c.checkPackContents}
	for _, step := range steps {
		if err := step(ctx); err != nil {
			return c.res, err
		}
	}
	return c.res, nil
}

func (c *checker) errorf(format string, args ...any) {
	c.issue(CheckIssue{Message: fmt.Sprintf(format, args...)})
}

func (c *checker) notef(format string, args ...any) {
	c.issue(CheckIssue{Note: true, Message: fmt.Sprintf(format, args...)})
}

func (c *checker) issue(is CheckIssue) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if is.Note {
		c.res.Notes++
	} else {
		c.res.Errors++
	}
	if c.opts.Report != nil {
		c.opts.Report(is)
	}
}

func (c *checker) progress(p CheckProgress) {
	if c.opts.Progress != nil {
		c.mu.Lock()
		c.opts.Progress(p)
		c.mu.Unlock()
	}
}

func (c *checker) loadSnapshots(ctx context.Context) error {
	c.progress(CheckProgress{Phase: "index"})
	list, err := List(ctx, c.r, func(id repo.ID, err error) {
		c.errorf("snapshot %s cannot be read: %v", id.Short(), err)
	})
	if err != nil {
		return err
	}
	c.snapshots = list
	c.res.Snapshots = len(list)
	return nil
}

// listPacks learns the stored packs, and where a blob is in several packs,
// picks a copy in one that is stored.
func (c *checker) listPacks(ctx context.Context) error {
	err := c.r.ListIDs(ctx, repo.PackFile, func(id repo.ID, size int64) error {
		c.stored[id] = size
		return nil
	})
	if err != nil {
		return fmt.Errorf("list packs: %w", err)
	}
	for k, copies := range c.copies {
		if _, ok := c.stored[c.blobs[k].Pack]; ok {
			continue
		}
		for _, e := range copies {
			if _, ok := c.stored[e.Pack]; ok {
				c.blobs[k] = e
				break
			}
		}
	}
	c.copies = nil
	return nil
}

// loadIndex reads every index file; those another one supersedes are
// checked but not used.
func (c *checker) loadIndex(ctx context.Context) error {
	var ids []repo.ID
	if err := c.r.ListIDs(ctx, repo.IndexFile, func(id repo.ID, _ int64) error {
		ids = append(ids, id)
		return nil
	}); err != nil {
		return fmt.Errorf("list index files: %w", err)
	}
	c.res.IndexFiles = len(ids)
	files := map[repo.ID]*index.File{}
	superseded := map[repo.ID]bool{}
	for _, id := range ids {
		f, err := index.LoadFile(ctx, c.r, id)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			c.errorf("index %s cannot be read: %v", id.Short(), err)
			continue
		}
		files[id] = f
		for _, s := range f.Supersedes {
			superseded[s] = true
		}
	}
	for _, id := range ids {
		f := files[id]
		if f == nil || superseded[id] {
			continue
		}
		for _, p := range f.Packs {
			blobs := slices.Clone(p.Blobs)
			slices.SortFunc(blobs, func(a, b repo.PackedBlob) int { return cmp.Compare(a.Offset, b.Offset) })
			if prev, ok := c.packs[p.Pack]; ok {
				if !slices.Equal(prev.blobs, blobs) {
					c.errorf("pack %s: index files %s and %s list different blobs for it", p.Pack.Short(), prev.file.Short(), id.Short())
				}
				continue
			}
			c.packs[p.Pack] = &indexedPack{blobs: blobs, file: id}
			for _, b := range blobs {
				k := checkKey(b.Type, b.ID)
				if _, ok := c.blobs[k]; ok {
					c.copies[k] = append(c.copies[k], b)
					continue
				}
				c.blobs[k] = b
			}
		}
	}
	c.res.Packs = len(c.packs)
	c.res.Blobs = len(c.blobs)
	return nil
}

// packSize is the size of a pack holding blobs (sorted by offset), with the
// header this cairn writes: raw, one record per blob.
func packSize(blobs []repo.PackedBlob) int64 {
	var end int64
	if n := len(blobs); n > 0 {
		end = int64(blobs[n-1].Offset) + int64(blobs[n-1].Length)
	}
	return end + crypto.Overhead + 2 + int64(len(blobs))*(1+32+4+4+4) + 4
}

// checkPackFiles compares the listing of packs with the index.
func (c *checker) checkPackFiles(context.Context) error {
	c.progress(CheckProgress{Phase: "packs"})
	for _, id := range c.sortedPacks() {
		p := c.packs[id]
		size, ok := c.stored[id]
		switch {
		case !ok:
			c.errorf("pack %s is missing: index %s names it with %d blobs", id.Short(), p.file.Short(), len(p.blobs))
		case size != packSize(p.blobs):
			c.errorf("pack %s has %d bytes, the index implies %d", id.Short(), size, packSize(p.blobs))
		}
	}
	var orphans []repo.ID
	for id := range c.stored {
		if _, ok := c.packs[id]; !ok {
			orphans = append(orphans, id)
		}
	}
	slices.SortFunc(orphans, byID)
	for _, id := range orphans {
		c.notef("pack %s is in no index (left by an interrupted backup?): \"cairn prune\" removes it, \"cairn repair index\" adds it", id.Short())
	}
	return nil
}

func (c *checker) sortedPacks() []repo.ID {
	ids := make([]repo.ID, 0, len(c.packs))
	for id := range c.packs {
		ids = append(ids, id)
	}
	slices.SortFunc(ids, byID)
	return ids
}

// treeJob is a tree to check and where it was first met.
type treeJob struct {
	id   repo.ID
	sn   repo.ID
	path string // of the directory; "" for a snapshot's root
}

func (j treeJob) where() string {
	p := j.path
	if p == "" {
		p = "/"
	}
	return fmt.Sprintf("snapshot %s: %s", j.sn.Short(), p)
}

// checkTrees walks every snapshot's trees, level by level, loading the
// trees of a level concurrently. A tree shared by several snapshots or
// directories is checked once.
func (c *checker) checkTrees(ctx context.Context) error {
	c.progress(CheckProgress{Phase: "snapshots"})
	seen := map[repo.ID]bool{}
	var level []treeJob
	for _, sn := range c.snapshots {
		if !seen[sn.Tree] {
			seen[sn.Tree] = true
			level = append(level, treeJob{id: sn.Tree, sn: sn.ID})
		}
	}
	for len(level) > 0 {
		trees := make([]*Tree, len(level))
		errs := make([]error, len(level))
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(c.opts.Connections)
		for i, job := range level {
			g.Go(func() error {
				trees[i], errs[i] = c.loadTree(gctx, job.id)
				return gctx.Err()
			})
		}
		if err := g.Wait(); err != nil {
			return err
		}
		var next []treeJob
		for i, job := range level {
			if errs[i] != nil {
				c.errorf("%s: %v", job.where(), errs[i])
				continue
			}
			c.res.Trees++
			for _, n := range trees[i].Nodes {
				p := job.path + "/" + string(n.Name)
				switch {
				case n.Type == TypeFile:
					for _, id := range n.Content {
						if err := c.blobAvailable(repo.DataBlob, id); err != nil {
							c.errorf("snapshot %s: %s: %v", job.sn.Short(), p, err)
						}
					}
				case n.Type == TypeDir && !seen[*n.Subtree]:
					seen[*n.Subtree] = true
					next = append(next, treeJob{id: *n.Subtree, sn: job.sn, path: p})
				}
			}
		}
		c.progress(CheckProgress{Phase: "snapshots", Done: c.res.Trees, Total: c.res.Trees + len(next)})
		level = next
	}
	return nil
}

// blobAvailable says why blob id cannot be loaded, or nil.
func (c *checker) blobAvailable(t repo.BlobType, id repo.ID) error {
	e, ok := c.blobs[checkKey(t, id)]
	if !ok {
		return fmt.Errorf("%s blob %s is not in the index", t, id.Short())
	}
	if _, ok := c.stored[e.Pack]; !ok {
		return fmt.Errorf("%s blob %s is in pack %s, which is missing", t, id.Short(), e.Pack.Short())
	}
	return nil
}

// loadTree reads tree id from the repository (never from a cache).
func (c *checker) loadTree(ctx context.Context, id repo.ID) (*Tree, error) {
	if err := c.blobAvailable(repo.TreeBlob, id); err != nil {
		return nil, err
	}
	e := c.blobs[checkKey(repo.TreeBlob, id)]
	h := repo.Handle{Type: repo.PackFile, Name: e.Pack.String()}
	sealed, err := repo.ReadAt(ctx, c.r.Backend(), h, int64(e.Offset), int(e.Length), nil)
	if err != nil {
		return nil, fmt.Errorf("read tree %s from pack %s: %w", id.Short(), e.Pack.Short(), err)
	}
	plain, err := pack.OpenBlob(c.r.Key(), e, sealed, nil)
	if err != nil {
		return nil, err
	}
	t, err := DecodeTree(plain)
	if err != nil {
		return nil, fmt.Errorf("tree %s in pack %s: %w", id.Short(), e.Pack.Short(), err)
	}
	return t, nil
}

// checkPackContents compares each stored pack's header with the index and,
// for the packs the subset selects, reads it whole.
func (c *checker) checkPackContents(ctx context.Context) error {
	var ids []repo.ID
	for _, id := range c.sortedPacks() {
		if _, ok := c.stored[id]; ok {
			ids = append(ids, id)
		}
	}
	read := map[repo.ID]bool{}
	if c.opts.ReadData {
		for _, id := range c.opts.Subset.choose(ids) {
			read[id] = true
		}
	}
	phase := "headers"
	if c.opts.ReadData {
		phase = "data"
	}
	total := len(ids)
	c.progress(CheckProgress{Phase: phase, Total: total})
	var done atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(c.opts.Connections)
	for _, id := range ids {
		g.Go(func() error {
			var err error
			if read[id] {
				err = c.readPack(gctx, id)
			} else {
				err = c.checkHeader(gctx, id)
			}
			if err != nil {
				return err
			}
			n := done.Add(1)
			c.mu.Lock()
			bytes := c.res.BytesRead
			c.mu.Unlock()
			c.progress(CheckProgress{Phase: phase, Done: int(n), Total: total, Bytes: bytes})
			return nil
		})
	}
	return g.Wait()
}

// checkHeader compares pack id's header with the index. Only ctx ending is
// returned; problems are reported.
func (c *checker) checkHeader(ctx context.Context, id repo.ID) error {
	hdr, err := pack.LoadHeader(ctx, c.r.Backend(), c.r.Key(), id, c.stored[id])
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		c.errorf("pack %s: header cannot be read: %v", id.Short(), err)
		return nil
	}
	c.compareHeader(id, hdr)
	return nil
}

// compareHeader reports every difference between the blobs pack id's
// header lists and those the index lists for it.
func (c *checker) compareHeader(id repo.ID, hdr []repo.PackedBlob) {
	at := map[uint32]repo.PackedBlob{}
	for _, b := range hdr {
		at[b.Offset] = b
	}
	for _, e := range c.packs[id].blobs {
		h, ok := at[e.Offset]
		switch {
		case !ok:
			c.errorf("pack %s: the index lists %s blob %s at offset %d, the pack's header does not", id.Short(), e.Type, e.ID.Short(), e.Offset)
			continue
		case h.Type != e.Type || h.ID != e.ID || h.Length != e.Length || h.RawLength != e.RawLength:
			c.errorf("pack %s: at offset %d the index lists %s blob %s (%d bytes, %d plain), the header %s blob %s (%d bytes, %d plain)",
				id.Short(), e.Offset, e.Type, e.ID.Short(), e.Length, e.RawLength, h.Type, h.ID.Short(), h.Length, h.RawLength)
		}
		delete(at, e.Offset)
	}
	rest := slices.Collect(maps.Values(at))
	slices.SortFunc(rest, func(a, b repo.PackedBlob) int { return cmp.Compare(a.Offset, b.Offset) })
	for _, b := range rest {
		c.errorf("pack %s: its header lists %s blob %s at offset %d, the index does not", id.Short(), b.Type, b.ID.Short(), b.Offset)
	}
}

// readPack downloads pack id once and verifies its content, every blob the
// index lists in it, and its header.
func (c *checker) readPack(ctx context.Context, id repo.ID) error {
	p := c.packs[id]
	blobs := 0
	content, err := pack.ReadPack(ctx, c.r.Backend(), c.r.Key(), id, p.blobs, func(_ repo.PackedBlob, _ []byte, err error) error {
		if err != nil {
			c.errorf("%v", err)
		}
		blobs++
		return nil
	})
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		c.errorf("%v", err)
		return nil
	}
	c.mu.Lock()
	c.res.PacksRead++
	c.res.BlobsRead += blobs
	c.res.BytesRead += content.Size
	c.mu.Unlock()
	if content.Hash != id {
		c.errorf("pack %s is damaged: its content does not match its name", id.Short())
	}
	if content.HeaderErr != nil {
		c.errorf("pack %s: header cannot be read: %v", id.Short(), content.HeaderErr)
		return nil
	}
	c.compareHeader(id, content.Header)
	return nil
}

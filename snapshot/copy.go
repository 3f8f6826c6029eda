package snapshot

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/cairn-backup/cairn/pack"
	"github.com/cairn-backup/cairn/repo"
	"golang.org/x/sync/errgroup"
)

// OriginalID is the ID that names sn across copies: the snapshot it was
// first copied from, or its own.
func OriginalID(sn *Snapshot) repo.ID {
	if sn.Original != nil {
		return *sn.Original
	}
	return sn.ID
}

// CopyProgress counts what a Copier has done so far.
type CopyProgress struct {
	Files, Dirs int   // entries of the source trees looked at
	Bytes       int64 // plaintext bytes of the data blobs read from the source
}

// Copier copies snapshots from one repository into another. Blob IDs are
// keyed with each repository's key, so every blob the destination lacks is
// read, hashed and encrypted anew, and every tree is rewritten with the
// destination's IDs. What the destination already has from earlier copies
// (see Learn) is not read again.
type Copier struct {
	src, dst *pack.Store
	workers  int
	sameKey  bool // both repositories give a blob the same ID

	mu    sync.Mutex
	trees map[repo.ID]repo.ID // source tree -> destination tree, all of it stored
	data  map[repo.ID]repo.ID // source data blob -> destination data blob, stored

	files, dirs atomic.Int64
	bytes       atomic.Int64
}

// NewCopier returns a Copier from src to dst that reads up to workers data
// blobs at once.
func NewCopier(src, dst *pack.Store, workers int) *Copier {
	return &Copier{
		src: src, dst: dst, workers: max(1, workers),
		sameKey: src.Repo().Key().BlobID(nil) == dst.Repo().Key().BlobID(nil),
		trees:   map[repo.ID]repo.ID{}, data: map[repo.ID]repo.ID{},
	}
}

// Progress returns the counts so far; it may be called at any time.
func (c *Copier) Progress() CopyProgress {
	return CopyProgress{Files: int(c.files.Load()), Dirs: int(c.dirs.Load()), Bytes: c.bytes.Load()}
}

// Learn records that source tree src was copied earlier as destination tree
// dst (a snapshot and its copy), so that copying a snapshot that shares
// parts of it reads none of those again. Only what is found identical, blob
// for blob and field for field, is recorded; a pair that does not match
// (a copy repaired since) simply teaches less. Errors other than a
// cancellation only teach less and are not returned. Learn must not run
// at the same time as CopyTree.
func (c *Copier) Learn(ctx context.Context, src, dst repo.ID) error {
	if _, err := c.learn(ctx, src, dst); err != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return nil
}

// learn matches source tree s against destination tree d and reports
// whether copying s would give d.
func (c *Copier) learn(ctx context.Context, s, d repo.ID) (bool, error) {
	if got, ok := c.trees[s]; ok {
		return got == d, nil
	}
	st, err := LoadTree(ctx, c.src, s)
	if err != nil {
		return false, err
	}
	dt, err := LoadTree(ctx, c.dst, d)
	if err != nil {
		return false, err
	}
	dstIdx := c.dst.Index()
	same := len(st.Nodes) == len(dt.Nodes)
	for _, sn := range st.Nodes {
		dn := dt.Find(sn.Name)
		if dn == nil || dn.Type != sn.Type || len(dn.Content) != len(sn.Content) || dn.Size != sn.Size {
			same = false
			continue
		}
		for i, id := range sn.Content {
			if dstIdx.Has(repo.DataBlob, dn.Content[i]) {
				c.data[id] = dn.Content[i]
			}
		}
		if sn.Type == TypeDir && sn.Subtree != nil && dn.Subtree != nil {
			ok, err := c.learn(ctx, *sn.Subtree, *dn.Subtree)
			if err != nil {
				return false, err
			}
			same = same && ok
		}
	}
	if !same {
		return false, nil
	}
	// The copy of s is d only if rewriting s gives d exactly.
	rewritten, ok := c.rewriteNodes(st)
	if !ok || !rewritten.Equal(dt) {
		return false, nil
	}
	c.trees[s] = d
	return true, nil
}

// rewriteNodes returns t with the destination's IDs, as far as they are
// known; ok says all of them were.
func (c *Copier) rewriteNodes(t *Tree) (*Tree, bool) {
	out := &Tree{Nodes: make([]*Node, 0, len(t.Nodes))}
	for _, n := range t.Nodes {
		m := *n
		if len(n.Content) > 0 {
			m.Content = make([]repo.ID, len(n.Content))
			for i, id := range n.Content {
				d, ok := c.data[id]
				if !ok {
					return nil, false
				}
				m.Content[i] = d
			}
		}
		if n.Subtree != nil {
			d, ok := c.trees[*n.Subtree]
			if !ok {
				return nil, false
			}
			m.Subtree = &d
		}
		out.Nodes = append(out.Nodes, &m)
	}
	return out, true
}

// CopyTree stores tree id of the source, and everything below it, in the
// destination and returns the destination's ID for it. It must run inside
// the destination store's WithUploader; the blobs are durable once that
// returns.
func (c *Copier) CopyTree(ctx context.Context, id repo.ID) (repo.ID, error) {
	// The data first, many blobs at once, then the trees bottom up: by
	// then every ID a tree needs is known.
	if err := c.copyData(ctx, id); err != nil {
		return repo.ID{}, err
	}
	return c.copyTree(ctx, id, "/")
}

// copyData copies the data blobs below tree id that were not copied yet.
func (c *Copier) copyData(ctx context.Context, id repo.ID) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(c.workers)
	seen := map[repo.ID]bool{}
	queued := map[repo.ID]bool{}
	var walk func(id repo.ID, path string) error
	walk = func(id repo.ID, path string) error {
		c.mu.Lock()
		_, done := c.trees[id]
		c.mu.Unlock()
		if done || seen[id] {
			return nil
		}
		seen[id] = true
		t, err := LoadTree(gctx, c.src, id)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		for _, n := range t.Nodes {
			p := path + string(n.Name)
			if n.Type == TypeDir {
				c.dirs.Add(1)
			} else {
				c.files.Add(1)
			}
			for _, b := range n.Content {
				c.mu.Lock()
				_, done := c.data[b]
				c.mu.Unlock()
				if done || queued[b] {
					continue
				}
				queued[b] = true
				g.Go(func() error {
					if err := c.copyBlob(gctx, b); err != nil {
						return fmt.Errorf("%s: %w", p, err)
					}
					return nil
				})
			}
			if n.Type == TypeDir {
				if n.Subtree == nil {
					return fmt.Errorf("%s: directory without a subtree", p)
				}
				if err := walk(*n.Subtree, p+"/"); err != nil {
					return err
				}
			}
		}
		return nil
	}
	walkErr := walk(id, "/")
	// A failed blob cancels the walk: its error is the one to report.
	if err := g.Wait(); err != nil {
		return err
	}
	return walkErr
}

// copyBlob stores data blob id of the source in the destination, unless the
// destination has it.
func (c *Copier) copyBlob(ctx context.Context, id repo.ID) error {
	if c.sameKey && c.dst.Index().Has(repo.DataBlob, id) {
		c.mu.Lock()
		c.data[id] = id
		c.mu.Unlock()
		return nil
	}
	plain, err := c.src.LoadBlob(ctx, repo.DataBlob, id, nil)
	if err != nil {
		return err
	}
	c.bytes.Add(int64(len(plain)))
	newID, _, err := c.dst.SaveBlob(ctx, repo.DataBlob, plain)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.data[id] = newID
	c.mu.Unlock()
	return nil
}

// copyTree rewrites tree id, found at path, with the destination's IDs and
// stores it; everything below it is stored first.
func (c *Copier) copyTree(ctx context.Context, id repo.ID, path string) (repo.ID, error) {
	c.mu.Lock()
	d, ok := c.trees[id]
	c.mu.Unlock()
	if ok {
		return d, nil
	}
	t, err := LoadTree(ctx, c.src, id)
	if err != nil {
		return repo.ID{}, fmt.Errorf("%s: %w", path, err)
	}
	for _, n := range t.Nodes {
		if n.Type == TypeDir && n.Subtree != nil {
			if _, err := c.copyTree(ctx, *n.Subtree, path+string(n.Name)+"/"); err != nil {
				return repo.ID{}, err
			}
		}
	}
	c.mu.Lock()
	nt, ok := c.rewriteNodes(t)
	c.mu.Unlock()
	if !ok {
		return repo.ID{}, fmt.Errorf("%s: %w", path, errNotCopied)
	}
	if d, err = SaveTree(ctx, c.dst, nt); err != nil {
		return repo.ID{}, fmt.Errorf("%s: store tree: %w", path, err)
	}
	c.mu.Lock()
	c.trees[id] = d
	c.mu.Unlock()
	return d, nil
}

var errNotCopied = errors.New("a blob below this directory was not copied")

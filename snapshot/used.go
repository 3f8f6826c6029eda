package snapshot

import (
	"context"
	"fmt"
	"sync"

	"github.com/cairn-backup/cairn/pack"
	"github.com/cairn-backup/cairn/repo"
)

// usedWorkers is how many trees UsedBlobs loads at once: decoding them is
// most of a prune's CPU, and from a remote repository each is a round trip.
const usedWorkers = 8

// UsedBlobs returns every tree and data blob the snapshots reference. Each
// tree is read once, however many snapshots share it. A tree that cannot
// be read, or a data blob the index does not have, is an error that names
// it and where it is used: what a damaged snapshot references is unknown,
// so a prune must not go on.
func UsedBlobs(ctx context.Context, store *pack.Store, snapshots []*Snapshot) (pack.BlobSet, error) {
	w := &usedWalk{store: store, used: pack.BlobSet{}}
	w.cond = sync.NewCond(&w.mu)
	for _, sn := range snapshots {
		w.push(usedTree{id: sn.Tree, path: "/", snapshot: sn.ID})
	}
	var wg sync.WaitGroup
	for range usedWorkers {
		wg.Go(func() { w.work(ctx) })
	}
	wg.Wait()
	if w.err != nil {
		return nil, w.err
	}
	return w.used, nil
}

type usedTree struct {
	id       repo.ID
	path     string
	snapshot repo.ID
}

// usedWalk is a shared stack of trees to load; a tree goes into used when
// it is pushed, so that no other worker loads it again.
type usedWalk struct {
	store *pack.Store

	mu     sync.Mutex
	cond   *sync.Cond
	used   pack.BlobSet
	stack  []usedTree
	active int // trees being loaded
	err    error
}

// push queues tree j unless it is known; w.mu must be held or unneeded.
func (w *usedWalk) push(j usedTree) {
	if w.used.Has(repo.TreeBlob, j.id) {
		return
	}
	w.used.Add(repo.TreeBlob, j.id)
	w.stack = append(w.stack, j)
}

func (w *usedWalk) work(ctx context.Context) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for {
		for len(w.stack) == 0 && w.active > 0 && w.err == nil {
			w.cond.Wait()
		}
		if len(w.stack) == 0 || w.err != nil {
			w.cond.Broadcast() // the walk is over
			return
		}
		j := w.stack[len(w.stack)-1]
		w.stack = w.stack[:len(w.stack)-1]
		w.active++
		w.mu.Unlock()
		t, err := w.load(ctx, j)
		w.mu.Lock()
		w.active--
		if err == nil {
			err = w.mark(j, t)
		}
		if err != nil && w.err == nil {
			w.err = fmt.Errorf("snapshot %s: %w", j.snapshot.Short(), err)
		}
		w.cond.Broadcast()
	}
}

func (w *usedWalk) load(ctx context.Context, j usedTree) (*Tree, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	t, err := LoadTree(ctx, w.store, j.id)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", j.path, err)
	}
	return t, nil
}

// mark adds the data blobs of t and queues its subtrees; w.mu is held.
func (w *usedWalk) mark(j usedTree, t *Tree) error {
	idx := w.store.Index()
	for _, n := range t.Nodes {
		p := j.path + string(n.Name)
		for _, c := range n.Content {
			if w.used.Has(repo.DataBlob, c) {
				continue
			}
			if !idx.Has(repo.DataBlob, c) {
				return fmt.Errorf("%s: data blob %s: %w", p, c.Short(), pack.ErrBlobNotFound)
			}
			w.used.Add(repo.DataBlob, c)
		}
		if n.Type != TypeDir {
			continue
		}
		if n.Subtree == nil {
			return fmt.Errorf("%s: directory without a subtree", p)
		}
		w.push(usedTree{id: *n.Subtree, path: p + "/", snapshot: j.snapshot})
	}
	return nil
}

package snapshot

import (
	"context"
	"fmt"

	"github.com/cairn-backup/cairn/crypto"
	"github.com/cairn-backup/cairn/pack"
	"github.com/cairn-backup/cairn/repo"
)

// Stats is what a set of snapshots holds (cairn stats).
type Stats struct {
	Snapshots int

	// What restoring every snapshot writes, counted as restic's
	// restore-size mode does: every entry (files, directories, links and
	// the rest) and the size of every file, a file with several hard links
	// in one snapshot once for that snapshot.
	Entries     int64
	RestoreSize uint64

	// What the snapshots take in the repository, each blob once however
	// many snapshots share it; counted only when asked for (NewStatsCounter).
	Blobs, DataBlobs int64
	StoredSize       uint64 // bytes in packs: compressed and encrypted
	UncompressedSize uint64 // what those blobs would take stored uncompressed
	DataSize         uint64 // plaintext of the data blobs: the unique content
}

// StatsCounter adds snapshots up into Stats, reading each tree once however
// many snapshots share it.
type StatsCounter struct {
	store *pack.Store
	blobs bool
	trees map[repo.ID]*treeStats
	seen  pack.BlobSet
	stats Stats
}

// treeStats sums up one tree and everything below it.
type treeStats struct {
	entries int64
	size    uint64     // of the files without other hard links
	links   []hardLink // the tree's own files with several links
	linked  []repo.ID  // subtrees that hold such files somewhere below
}

type hardLink struct{ dev, inode, size uint64 }

// NewStatsCounter returns a counter over store; with blobs, it also counts
// the blobs the snapshots reference, which looks every one of them up in
// the index.
func NewStatsCounter(store *pack.Store, blobs bool) *StatsCounter {
	return &StatsCounter{store: store, blobs: blobs, trees: map[repo.ID]*treeStats{}, seen: pack.BlobSet{}}
}

// Stats returns the sums of the snapshots added so far.
func (c *StatsCounter) Stats() Stats { return c.stats }

// Add counts sn.
func (c *StatsCounter) Add(ctx context.Context, sn *Snapshot) error {
	ts, err := c.tree(ctx, sn.Tree, "/")
	if err != nil {
		return fmt.Errorf("snapshot %s: %w", sn.ID.Short(), err)
	}
	c.stats.Snapshots++
	c.stats.Entries += ts.entries
	c.stats.RestoreSize += ts.size
	// Hard links are counted per snapshot, wherever in it they are.
	seen := map[[2]uint64]bool{}
	var addLinks func(ts *treeStats)
	addLinks = func(ts *treeStats) {
		for _, l := range ts.links {
			if k := [2]uint64{l.dev, l.inode}; !seen[k] {
				seen[k] = true
				c.stats.RestoreSize += l.size
			}
		}
		for _, id := range ts.linked {
			addLinks(c.trees[id])
		}
	}
	addLinks(ts)
	return nil
}

// tree sums up tree id, found at path.
func (c *StatsCounter) tree(ctx context.Context, id repo.ID, path string) (*treeStats, error) {
	if ts, ok := c.trees[id]; ok {
		return ts, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	t, err := LoadTree(ctx, c.store, id)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if c.blobs {
		if err := c.countBlob(repo.TreeBlob, id); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	}
	ts := &treeStats{}
	for _, n := range t.Nodes {
		p := path + string(n.Name)
		ts.entries++
		switch {
		case n.Type == TypeFile && n.Links > 1 && n.Inode != 0:
			ts.links = append(ts.links, hardLink{n.DeviceID, n.Inode, n.Size})
		case n.Type == TypeFile:
			ts.size += n.Size
		}
		if c.blobs {
			for _, b := range n.Content {
				if err := c.countBlob(repo.DataBlob, b); err != nil {
					return nil, fmt.Errorf("%s: %w", p, err)
				}
			}
		}
		if n.Type != TypeDir {
			continue
		}
		if n.Subtree == nil {
			return nil, fmt.Errorf("%s: directory without a subtree", p)
		}
		sub, err := c.tree(ctx, *n.Subtree, p+"/")
		if err != nil {
			return nil, err
		}
		ts.entries += sub.entries
		ts.size += sub.size
		if len(sub.links) > 0 || len(sub.linked) > 0 {
			ts.linked = append(ts.linked, *n.Subtree)
		}
	}
	c.trees[id] = ts
	return ts, nil
}

// countBlob adds a referenced blob to the sums, once.
func (c *StatsCounter) countBlob(t repo.BlobType, id repo.ID) error {
	if c.seen.Has(t, id) {
		return nil
	}
	e, ok := c.store.Index().Lookup(t, id)
	if !ok {
		return fmt.Errorf("%s blob %s: %w", t, id.Short(), pack.ErrBlobNotFound)
	}
	c.seen.Add(t, id)
	c.stats.Blobs++
	c.stats.StoredSize += uint64(e.Length)
	// One encoding byte, then the plaintext as is, sealed.
	c.stats.UncompressedSize += uint64(e.RawLength) + 1 + crypto.Overhead
	if t == repo.DataBlob {
		c.stats.DataBlobs++
		c.stats.DataSize += uint64(e.RawLength)
	}
	return nil
}

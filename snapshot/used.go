package snapshot

import (
	"context"
	"fmt"

	"github.com/cairn-backup/cairn/pack"
	"github.com/cairn-backup/cairn/repo"
)

// UsedBlobs returns every tree and data blob the snapshots reference. Each
// tree is read once, however many snapshots share it. A tree that cannot
// be read, or a data blob the index does not have, is an error that names
// it and where it is used: what a damaged snapshot references is unknown,
// so a prune must not go on.
func UsedBlobs(ctx context.Context, store *pack.Store, snapshots []*Snapshot) (pack.BlobSet, error) {
	used := pack.BlobSet{}
	for _, sn := range snapshots {
		if err := markTree(ctx, store, used, sn.Tree, "/"); err != nil {
			return nil, fmt.Errorf("snapshot %s: %w", sn.ID.Short(), err)
		}
	}
	return used, nil
}

// markTree adds tree id, found at path, and everything below it to used.
func markTree(ctx context.Context, store *pack.Store, used pack.BlobSet, id repo.ID, path string) error {
	if used.Has(repo.TreeBlob, id) {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	t, err := LoadTree(ctx, store, id)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	idx := store.Index()
	for _, n := range t.Nodes {
		p := path + string(n.Name)
		for _, c := range n.Content {
			if used.Has(repo.DataBlob, c) {
				continue
			}
			if !idx.Has(repo.DataBlob, c) {
				return fmt.Errorf("%s: data blob %s: %w", p, c.Short(), pack.ErrBlobNotFound)
			}
			used.Add(repo.DataBlob, c)
		}
		if n.Type != TypeDir {
			continue
		}
		if n.Subtree == nil {
			return fmt.Errorf("%s: directory without a subtree", p)
		}
		if err := markTree(ctx, store, used, *n.Subtree, p+"/"); err != nil {
			return err
		}
	}
	// Marked only once everything below is: a tree in the set is complete.
	used.Add(repo.TreeBlob, id)
	return nil
}

package snapshot

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/cairn-backup/cairn/pack"
	"github.com/cairn-backup/cairn/repo"
)

// RepairTag marks a snapshot that RepairSnapshots rewrote.
const RepairTag = "repaired"

// RepairOptions tune RepairSnapshots.
type RepairOptions struct {
	DryRun bool // find the losses, change nothing
	// Report hears each loss as it is found, snapshot by snapshot.
	Report func(RepairLoss)
}

// RepairLoss is an entry a repaired snapshot no longer holds.
type RepairLoss struct {
	Snapshot repo.ID
	Path     string // "/data/x/file"; "/" for the whole tree
	// Dir says that a directory was kept, empty: its listing is gone.
	// Otherwise a file was dropped.
	Dir    bool
	Reason string // "data blob 1a2b3c4d is not in the index"
}

// RepairedSnapshot is a snapshot replaced by RepairSnapshots.
type RepairedSnapshot struct {
	Old, New repo.ID // New is zero in a dry run
	Losses   []RepairLoss
}

// RepairResult says what RepairSnapshots did.
type RepairResult struct {
	Snapshots  int // snapshots read
	Repaired   []RepairedSnapshot
	Unreadable []error // snapshot files that cannot be read, left as they are
}

// RepairSnapshots rewrites every snapshot whose trees reference data the
// repository no longer has: a tree or data blob not in the index, or in a
// pack that is missing, or a tree that does not authenticate or decode.
// A file with a missing data blob is dropped (not kept truncated: a later
// backup then sees it as new and reads it again); a directory whose listing
// is gone is kept, empty. The new snapshot has the old one's fields and
// time, plus the tag "repaired"; the old snapshot file is removed. The
// caller holds the exclusive lock and should rebuild the index first
// ("repair index"); when the index names packs that are gone, only a dry
// run is allowed.
func RepairSnapshots(ctx context.Context, store *pack.Store, opts RepairOptions) (RepairResult, error) {
	var res RepairResult
	r := store.Repo()
	w := &rewriter{store: store, packs: map[repo.ID]bool{}, done: map[repo.ID]rewritten{}, dryRun: opts.DryRun}
	if err := r.ListIDs(ctx, repo.PackFile, func(id repo.ID, _ int64) error {
		w.packs[id] = true
		return nil
	}); err != nil {
		return res, fmt.Errorf("list packs: %w", err)
	}
	if !opts.DryRun {
		// A new tree equal to one indexed in a missing pack would be taken
		// as stored, and the repaired snapshot would miss it again.
		gone := map[repo.ID]bool{}
		if err := store.Index().Each(func(e repo.PackedBlob) error {
			if !w.packs[e.Pack] {
				gone[e.Pack] = true
			}
			return nil
		}); err != nil {
			return res, fmt.Errorf("read index: %w", err)
		}
		if len(gone) > 0 {
			return res, fmt.Errorf("the index names %d packs that are missing: run \"cairn repair index\" first", len(gone))
		}
	}
	list, err := List(ctx, r, func(id repo.ID, err error) {
		res.Unreadable = append(res.Unreadable, fmt.Errorf("snapshot %s cannot be read and is left as it is: %w", id.Short(), err))
	})
	if err != nil {
		return res, err
	}
	res.Snapshots = len(list)

	type change struct {
		sn   *Snapshot
		tree repo.ID
	}
	var changes []change
	rewrite := func(ctx context.Context) error {
		for _, sn := range list {
			root, err := w.tree(ctx, sn.Tree)
			var gone *goneError
			if errors.As(err, &gone) {
				var eerr error
				if root.id, eerr = w.emptyTree(ctx); eerr != nil {
					return eerr
				}
				root.losses = []RepairLoss{{Path: "/", Dir: true, Reason: gone.Error()}}
			} else if err != nil {
				return fmt.Errorf("snapshot %s: %w", sn.ID.Short(), err)
			}
			if len(root.losses) == 0 {
				continue
			}
			rs := RepairedSnapshot{Old: sn.ID}
			for _, l := range root.losses {
				l.Snapshot = sn.ID
				rs.Losses = append(rs.Losses, l)
				if opts.Report != nil {
					opts.Report(l)
				}
			}
			res.Repaired = append(res.Repaired, rs)
			changes = append(changes, change{sn, root.id})
		}
		return nil
	}
	if opts.DryRun {
		return res, rewrite(ctx)
	}
	// Trees first, durable and indexed; then the snapshots that name them.
	if err := store.WithUploader(ctx, pack.Options{}, rewrite); err != nil {
		return res, err
	}
	for i, ch := range changes {
		nsn := *ch.sn
		nsn.Tree = ch.tree
		nsn.Tags = slices.Clone(ch.sn.Tags)
		if !slices.Contains(nsn.Tags, RepairTag) {
			nsn.Tags = append(nsn.Tags, RepairTag)
		}
		id, err := Save(ctx, r, &nsn)
		if err != nil {
			return res, fmt.Errorf("save repaired snapshot of %s: %w", ch.sn.ID.Short(), err)
		}
		res.Repaired[i].New = id
		if err := r.RemoveFile(ctx, repo.SnapshotFile, ch.sn.ID); err != nil {
			return res, fmt.Errorf("remove snapshot %s (replaced by %s): %w", ch.sn.ID.Short(), id.Short(), err)
		}
	}
	return res, nil
}

// goneError says a tree is missing or damaged, as opposed to not readable
// at the moment.
type goneError struct{ err error }

func (e *goneError) Error() string { return e.err.Error() }
func (e *goneError) Unwrap() error { return e.err }

// rewritten is a tree as repaired: its new ID (the old one when nothing
// was lost) and the losses below it, with paths relative to it.
type rewritten struct {
	id     repo.ID
	losses []RepairLoss
}

type rewriter struct {
	store  *pack.Store
	packs  map[repo.ID]bool // stored packs
	done   map[repo.ID]rewritten
	empty  *repo.ID
	dryRun bool
}

// blobGone says why blob id cannot be loaded, or nil.
func (w *rewriter) blobGone(t repo.BlobType, id repo.ID) (repo.PackedBlob, error) {
	e, ok := w.store.Index().Lookup(t, id)
	if !ok {
		return e, fmt.Errorf("%s blob %s is not in the index", t, id.Short())
	}
	if !w.packs[e.Pack] {
		return e, fmt.Errorf("%s blob %s is in pack %s, which is missing", t, id.Short(), e.Pack.Short())
	}
	return e, nil
}

// loadTree reads tree id from its pack in the repository. A *goneError
// means it is missing or damaged.
func (w *rewriter) loadTree(ctx context.Context, id repo.ID) (*Tree, error) {
	e, err := w.blobGone(repo.TreeBlob, id)
	if err != nil {
		return nil, &goneError{err}
	}
	r := w.store.Repo()
	h := repo.Handle{Type: repo.PackFile, Name: e.Pack.String()}
	sealed, err := repo.ReadAt(ctx, r.Backend(), h, int64(e.Offset), int(e.Length), nil)
	if errors.Is(err, repo.ErrNotFound) {
		return nil, &goneError{fmt.Errorf("tree blob %s is in pack %s, which is missing", id.Short(), e.Pack.Short())}
	}
	if err != nil {
		return nil, fmt.Errorf("read tree %s from pack %s: %w", id.Short(), e.Pack.Short(), err)
	}
	plain, err := pack.OpenBlob(r.Key(), e, sealed, nil)
	if err != nil {
		return nil, &goneError{err}
	}
	t, err := DecodeTree(plain)
	if err != nil {
		return nil, &goneError{fmt.Errorf("tree %s in pack %s: %w", id.Short(), e.Pack.Short(), err)}
	}
	return t, nil
}

// tree repairs tree id; a *goneError means it cannot be loaded at all.
// Trees shared by several directories or snapshots are repaired once.
func (w *rewriter) tree(ctx context.Context, id repo.ID) (rewritten, error) {
	if res, ok := w.done[id]; ok {
		return res, nil
	}
	if err := ctx.Err(); err != nil {
		return rewritten{}, err
	}
	t, err := w.loadTree(ctx, id)
	if err != nil {
		return rewritten{}, err
	}
	nodes := make([]*Node, 0, len(t.Nodes))
	var losses []RepairLoss
	changed := false
	for _, n := range t.Nodes {
		name := "/" + string(n.Name)
		switch n.Type {
		case TypeFile:
			if reason := w.contentGone(n); reason != nil {
				losses = append(losses, RepairLoss{Path: name, Reason: reason.Error()})
				changed = true
				continue
			}
		case TypeDir:
			sub, err := w.tree(ctx, *n.Subtree)
			var gone *goneError
			switch {
			case errors.As(err, &gone):
				if sub.id, err = w.emptyTree(ctx); err != nil {
					return rewritten{}, err
				}
				losses = append(losses, RepairLoss{Path: name, Dir: true, Reason: gone.Error()})
			case err != nil:
				return rewritten{}, err
			}
			for _, l := range sub.losses {
				l.Path = name + l.Path
				losses = append(losses, l)
			}
			if sub.id != *n.Subtree {
				m := *n
				m.Subtree = &sub.id
				n = &m
				changed = true
			}
		}
		nodes = append(nodes, n)
	}
	res := rewritten{id: id, losses: losses}
	if changed {
		if res.id, err = w.save(ctx, &Tree{Nodes: nodes}); err != nil {
			return rewritten{}, err
		}
	}
	w.done[id] = res
	return res, nil
}

// contentGone says why a file node's content cannot be read, or nil.
func (w *rewriter) contentGone(n *Node) error {
	for _, id := range n.Content {
		if _, err := w.blobGone(repo.DataBlob, id); err != nil {
			return err
		}
	}
	return nil
}

func (w *rewriter) emptyTree(ctx context.Context) (repo.ID, error) {
	if w.empty == nil {
		id, err := w.save(ctx, &Tree{})
		if err != nil {
			return id, err
		}
		w.empty = &id
	}
	return *w.empty, nil
}

// save stores t, or in a dry run only computes its ID.
func (w *rewriter) save(ctx context.Context, t *Tree) (repo.ID, error) {
	if !w.dryRun {
		return SaveTree(ctx, w.store, t)
	}
	t.Sort()
	b, err := t.Encode()
	if err != nil {
		return repo.ID{}, err
	}
	return repo.ID(w.store.Repo().Key().BlobID(b)), nil
}

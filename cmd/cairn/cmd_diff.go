package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/cairn-backup/cairn/pack"
	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/snapshot"
	"github.com/urfave/cli/v2"
)

func newDiffCommand() *cli.Command {
	return &cli.Command{
		Name:      "diff",
		Usage:     "show what changed between two snapshots",
		ArgsUsage: "ID1 ID2",
		Action:    runDiff,
	}
}

// diffStats are the totals printed at the end of a diff.
type diffStats struct {
	MessageType  string `json:"message_type"`
	FilesAdded   int    `json:"files_added"`
	FilesRemoved int    `json:"files_removed"`
	FilesChanged int    `json:"files_changed"`
	DirsAdded    int    `json:"dirs_added"`
	DirsRemoved  int    `json:"dirs_removed"`
	BytesAdded   int64  `json:"bytes_added"`
	BytesRemoved int64  `json:"bytes_removed"`
}

// differ compares two trees. Content blobs of what differs are collected
// per side; the bytes added are those of blobs only the second side has.
type differ struct {
	store *pack.Store
	out   *output
	w     *bufio.Writer
	enc   *json.Encoder
	stats diffStats
	blobs [2]map[repo.ID]struct{} // 0: first snapshot, 1: second
}

func runDiff(c *cli.Context) error {
	if err := needArgs(c, 2, 2); err != nil {
		return err
	}
	out := newOutput(c)
	return withStore(c, true, func(ctx context.Context, r *repo.Repo, store *pack.Store) error {
		var sns [2]*snapshot.Snapshot
		for i := range sns {
			sn, err := findSnapshot(ctx, r, c.Args().Get(i), snapshot.Filter{})
			if err != nil {
				return err
			}
			sns[i] = sn
		}
		out.Verbosef("comparing snapshot %s to %s\n", sns[0].ID.Short(), sns[1].ID.Short())
		d := &differ{store: store, out: out, w: bufio.NewWriter(out.stdout),
			blobs: [2]map[repo.ID]struct{}{{}, {}}}
		d.enc = json.NewEncoder(d.w)
		d.enc.SetEscapeHTML(false)
		defer d.w.Flush()
		if err := d.trees(ctx, "", &sns[0].Tree, &sns[1].Tree); err != nil {
			return err
		}
		d.stats.BytesAdded = d.blobBytes(1, 0)
		d.stats.BytesRemoved = d.blobBytes(0, 1)
		return d.summary()
	})
}

// blobBytes sums the plaintext sizes of blobs on side a that side b lacks.
func (d *differ) blobBytes(a, b int) int64 {
	var n int64
	for id := range d.blobs[a] {
		if _, ok := d.blobs[b][id]; ok {
			continue
		}
		if e, ok := d.store.Index().Lookup(repo.DataBlob, id); ok {
			n += int64(e.RawLength)
		}
	}
	return n
}

func (d *differ) load(ctx context.Context, id *repo.ID) ([]*snapshot.Node, error) {
	if id == nil {
		return nil, nil
	}
	t, err := snapshot.LoadTree(ctx, d.store, *id)
	if err != nil {
		return nil, err
	}
	t.Sort()
	return t.Nodes, nil
}

// trees compares two directories; identical subtrees are skipped unread.
func (d *differ) trees(ctx context.Context, prefix string, a, b *repo.ID) error {
	if a != nil && b != nil && *a == *b {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	na, err := d.load(ctx, a)
	if err != nil {
		return err
	}
	nb, err := d.load(ctx, b)
	if err != nil {
		return err
	}
	for len(na) > 0 || len(nb) > 0 {
		cmp := 0
		switch {
		case len(na) == 0:
			cmp = 1
		case len(nb) == 0:
			cmp = -1
		default:
			cmp = bytes.Compare(na[0].Name, nb[0].Name)
		}
		switch {
		case cmp < 0:
			if err := d.side(ctx, 0, prefix+"/"+string(na[0].Name), na[0]); err != nil {
				return err
			}
			na = na[1:]
		case cmp > 0:
			if err := d.side(ctx, 1, prefix+"/"+string(nb[0].Name), nb[0]); err != nil {
				return err
			}
			nb = nb[1:]
		default:
			if err := d.both(ctx, prefix+"/"+string(na[0].Name), na[0], nb[0]); err != nil {
				return err
			}
			na, nb = na[1:], nb[1:]
		}
	}
	return nil
}

// side reports a node (and everything below) present on one side only:
// 0 removed, 1 added.
func (d *differ) side(ctx context.Context, which int, path string, n *snapshot.Node) error {
	mark := "-"
	if which == 1 {
		mark = "+"
	}
	if n.Type == snapshot.TypeDir {
		if which == 1 {
			d.stats.DirsAdded++
		} else {
			d.stats.DirsRemoved++
		}
		if err := d.print(mark, path+"/"); err != nil {
			return err
		}
		nodes, err := d.load(ctx, n.Subtree)
		if err != nil {
			return err
		}
		for _, c := range nodes {
			if err := d.side(ctx, which, path+"/"+string(c.Name), c); err != nil {
				return err
			}
		}
		return nil
	}
	if which == 1 {
		d.stats.FilesAdded++
	} else {
		d.stats.FilesRemoved++
	}
	d.collect(which, n)
	return d.print(mark, path)
}

func (d *differ) collect(which int, n *snapshot.Node) {
	for _, id := range n.Content {
		d.blobs[which][id] = struct{}{}
	}
}

// both compares a node present on both sides.
func (d *differ) both(ctx context.Context, path string, a, b *snapshot.Node) error {
	aDir, bDir := a.Type == snapshot.TypeDir, b.Type == snapshot.TypeDir
	switch {
	case aDir && bDir:
		if a.Mode != b.Mode {
			if err := d.print("M", path+"/"); err != nil {
				return err
			}
		}
		return d.trees(ctx, path, a.Subtree, b.Subtree)
	case aDir || bDir:
		// A directory replaced by a file or the other way round.
		if err := d.side(ctx, 0, path, a); err != nil {
			return err
		}
		return d.side(ctx, 1, path, b)
	}
	if !modified(a, b) {
		return nil
	}
	d.stats.FilesChanged++
	d.collect(0, a)
	d.collect(1, b)
	return d.print("M", path)
}

// modified reports a change of content, size, mode or type.
func modified(a, b *snapshot.Node) bool {
	return a.Type != b.Type || a.Size != b.Size || a.Mode != b.Mode ||
		!slices.Equal(a.Content, b.Content) || !bytes.Equal(a.Link, b.Link) || a.Rdev != b.Rdev
}

func (d *differ) print(mark, path string) error {
	if d.out.json {
		return d.enc.Encode(struct {
			MessageType string `json:"message_type"`
			Path        string `json:"path"`
			Modifier    string `json:"modifier"`
		}{"change", path, mark})
	}
	if d.out.quiet {
		return nil
	}
	_, err := fmt.Fprintf(d.w, "%s %s\n", mark, path)
	return err
}

func (d *differ) summary() error {
	s := d.stats
	if d.out.json {
		s.MessageType = "statistics"
		return d.enc.Encode(s)
	}
	if d.out.quiet {
		return nil
	}
	fmt.Fprintf(d.w, "\nFiles:   %6d new, %6d removed, %6d changed\n", s.FilesAdded, s.FilesRemoved, s.FilesChanged)
	fmt.Fprintf(d.w, "Dirs:    %6d new, %6d removed\n", s.DirsAdded, s.DirsRemoved)
	fmt.Fprintf(d.w, "Added:   %s\n", formatBytes(s.BytesAdded))
	fmt.Fprintf(d.w, "Removed: %s\n", formatBytes(s.BytesRemoved))
	return nil
}

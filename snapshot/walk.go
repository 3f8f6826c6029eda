package snapshot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/cairn-backup/cairn/pack"
	"github.com/cairn-backup/cairn/repo"
)

// treeBufs hold trees' plaintext while they are decoded: a walk loads a
// tree per directory, and DecodeTree copies what it keeps.
var treeBufs = sync.Pool{New: func() any { return new([]byte) }}

// LoadTree reads and decodes tree blob id.
func LoadTree(ctx context.Context, store *pack.Store, id repo.ID) (*Tree, error) {
	bp := treeBufs.Get().(*[]byte)
	defer treeBufs.Put(bp)
	b, err := store.LoadBlob(ctx, repo.TreeBlob, id, *bp)
	if err != nil {
		return nil, fmt.Errorf("load tree %s: %w", id.Short(), err)
	}
	*bp = b
	t, err := DecodeTree(b)
	if err != nil {
		return nil, fmt.Errorf("tree %s: %w", id.Short(), err)
	}
	return t, nil
}

// SaveTree encodes and stores t, returning its blob id.
func SaveTree(ctx context.Context, store *pack.Store, t *Tree) (repo.ID, error) {
	t.Sort()
	b, err := t.Encode()
	if err != nil {
		return repo.ID{}, err
	}
	id, _, err := store.SaveBlob(ctx, repo.TreeBlob, b)
	return id, err
}

// ErrSkipDir, returned by a Walk callback for a directory, skips its contents.
var ErrSkipDir = errors.New("skip this directory")

// Walk calls fn for every node below tree, depth first in name order, with
// its slash-separated path from the root ("/data/x"). Names are bytes; the
// path joins them as they are.
func Walk(ctx context.Context, store *pack.Store, tree repo.ID, fn func(path string, n *Node) error) error {
	return walk(ctx, store, tree, "", fn)
}

func walk(ctx context.Context, store *pack.Store, id repo.ID, prefix string, fn func(string, *Node) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	t, err := LoadTree(ctx, store, id)
	if err != nil {
		return err
	}
	for _, n := range t.Nodes {
		p := prefix + "/" + string(n.Name)
		err := fn(p, n)
		if errors.Is(err, ErrSkipDir) {
			continue
		}
		if err != nil {
			return err
		}
		if n.Type == TypeDir {
			if err := walk(ctx, store, *n.Subtree, p, fn); err != nil {
				return err
			}
		}
	}
	return nil
}

// FindNode returns the node at path p ("/data/x") in a snapshot's tree. The
// root ("/" or "") is returned as a synthetic directory node.
func FindNode(ctx context.Context, store *pack.Store, sn *Snapshot, p string) (*Node, error) {
	id := sn.Tree
	node := &Node{Name: Name("/"), Type: TypeDir, Mode: 0o755, Subtree: &id}
	for _, el := range strings.Split(strings.Trim(p, "/"), "/") {
		if el == "" || el == "." {
			continue
		}
		if node.Type != TypeDir {
			return nil, fmt.Errorf("path %s: %q is not a directory", p, node.Name)
		}
		t, err := LoadTree(ctx, store, *node.Subtree)
		if err != nil {
			return nil, err
		}
		if node = t.Find([]byte(el)); node == nil {
			return nil, fmt.Errorf("path %s not found in snapshot %s: %w", p, sn.ID.Short(), repo.ErrNotFound)
		}
	}
	return node, nil
}

// WriteContent writes a file node's content to w.
func WriteContent(ctx context.Context, store *pack.Store, n *Node, w io.Writer) error {
	var buf []byte
	for _, id := range n.Content {
		var err error
		if buf, err = store.LoadBlob(ctx, repo.DataBlob, id, buf); err != nil {
			return err
		}
		if _, err := w.Write(buf); err != nil {
			return err
		}
	}
	return nil
}

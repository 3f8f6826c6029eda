package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/cairn-backup/cairn/pack"
	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/snapshot"
	"github.com/urfave/cli/v2"
)

func newLsCommand() *cli.Command {
	return &cli.Command{
		Name:      "ls",
		Usage:     "list the entries of a snapshot, or of a path in it",
		ArgsUsage: "ID|latest [PATH]",
		Flags: append([]cli.Flag{
			&cli.BoolFlag{Name: "long", Aliases: []string{"l"}, Usage: "show mode, owner, size and time, like ls -l"},
		}, filterFlags()...),
		Action: runLs,
	}
}

// lsNode is one line of ls --json. path_b64 carries the exact bytes of a
// path that is not valid UTF-8 (path then holds a lossy rendering).
type lsNode struct {
	Path    string `json:"path"`
	PathB64 string `json:"path_b64,omitempty"`
	Type    string `json:"type"`
	Size    uint64 `json:"size"`
	Mode    uint32 `json:"mode"`
	MTime   string `json:"mtime"`
	UID     uint32 `json:"uid"`
	GID     uint32 `json:"gid"`
}

func runLs(c *cli.Context) error {
	if err := needArgs(c, 1, 2); err != nil {
		return err
	}
	f, err := readFilter(c)
	if err != nil {
		return err
	}
	out := newOutput(c)
	return withStore(c, true, func(ctx context.Context, r *repo.Repo, store *pack.Store) error {
		sn, err := findSnapshot(ctx, r, c.Args().Get(0), f)
		if err != nil {
			return err
		}
		out.Verbosef("snapshot %s of %v at %s\n", sn.ID.Short(), sn.Paths, localTime(sn.Time))
		w := bufio.NewWriter(out.stdout)
		defer w.Flush()
		enc := json.NewEncoder(w)
		enc.SetEscapeHTML(false)
		print := func(p string, n *snapshot.Node) error {
			switch {
			case out.json:
				j := lsNode{Path: p, Type: n.Type, Size: n.Size, Mode: n.Mode,
					MTime: n.ModTime.Local().Format(time.RFC3339Nano), UID: n.UID, GID: n.GID}
				if !utf8.ValidString(p) {
					j.PathB64 = base64.StdEncoding.EncodeToString([]byte(p))
				}
				return enc.Encode(j)
			case out.quiet:
				return nil
			case c.Bool("long"):
				_, err := fmt.Fprintln(w, longLine(p, n))
				return err
			default:
				_, err := fmt.Fprintln(w, p)
				return err
			}
		}
		return walkFrom(ctx, store, sn, c.Args().Get(1), print)
	})
}

// walkFrom calls fn for the node at path p (none for the root) and every
// node below it, with paths from the snapshot's root.
func walkFrom(ctx context.Context, store *pack.Store, sn *snapshot.Snapshot, p string, fn func(string, *snapshot.Node) error) error {
	p = "/" + strings.Trim(p, "/")
	if p == "/" {
		return snapshot.Walk(ctx, store, sn.Tree, fn)
	}
	n, err := snapshot.FindNode(ctx, store, sn, p)
	if errors.Is(err, repo.ErrNotFound) {
		return fmt.Errorf("path %s not found in snapshot %s", p, sn.ID.Short())
	}
	if err != nil {
		return err
	}
	if err := fn(p, n); err != nil || n.Type != snapshot.TypeDir {
		return err
	}
	return snapshot.Walk(ctx, store, *n.Subtree, func(sub string, n *snapshot.Node) error {
		return fn(p+sub, n)
	})
}

// longLine renders a node like ls -l: mode, uid, gid, size, mtime, path.
func longLine(p string, n *snapshot.Node) string {
	s := fmt.Sprintf("%s %5d %5d %12d %s %s", modeString(n), n.UID, n.GID, n.Size, localTime(n.ModTime), p)
	if n.Type == snapshot.TypeSymlink {
		s += " -> " + string(n.Link)
	}
	return s
}

// modeString renders type and permission bits as ls does ("drwxr-xr-x").
func modeString(n *snapshot.Node) string {
	b := []byte("?rwxrwxrwx")
	switch n.Type {
	case snapshot.TypeFile:
		b[0] = '-'
	case snapshot.TypeDir:
		b[0] = 'd'
	case snapshot.TypeSymlink:
		b[0] = 'l'
	case snapshot.TypeDev:
		b[0] = 'b'
	case snapshot.TypeCharDev:
		b[0] = 'c'
	case snapshot.TypeFIFO:
		b[0] = 'p'
	case snapshot.TypeSocket:
		b[0] = 's'
	}
	for i := 0; i < 9; i++ {
		if n.Mode&(1<<(8-i)) == 0 {
			b[i+1] = '-'
		}
	}
	special := func(bit uint32, pos int, set, unset byte) {
		if n.Mode&bit != 0 {
			if b[pos] == '-' {
				b[pos] = unset
			} else {
				b[pos] = set
			}
		}
	}
	special(0o4000, 3, 's', 'S')
	special(0o2000, 6, 's', 'S')
	special(0o1000, 9, 't', 'T')
	return string(b)
}

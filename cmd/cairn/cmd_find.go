package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/cairn-backup/cairn/pack"
	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/snapshot"
	"github.com/urfave/cli/v2"
)

func newFindCommand() *cli.Command {
	return &cli.Command{
		Name:  "find",
		Usage: "find files and directories in snapshots",
		Description: `PATTERN is a glob with restore's rules: "*" stays within a path element,
"**" crosses them, a pattern without "/" matches a name at any depth, and a
pattern starting with "/" is anchored at the snapshot's root. A directory
that matches matches everything below it. Matching is case-sensitive unless
--ignore-case is given. Several patterns find what matches any of them.

With no --snapshot, every snapshot that passes the filters is searched.`,
		ArgsUsage: "PATTERN...",
		Flags: append([]cli.Flag{
			&cli.StringSliceFlag{Name: "snapshot", Aliases: []string{"s"}, Usage: "search only snapshot `ID` (repeatable; \"latest\" works)"},
			&cli.BoolFlag{Name: "ignore-case", Aliases: []string{"i"}, Usage: "match regardless of case"},
			&cli.BoolFlag{Name: "long", Aliases: []string{"l"}, Usage: "show mode, owner, size and time, like ls -l"},
			&cli.StringFlag{Name: "oldest", Usage: "only entries modified at or after `TIME`"},
			&cli.StringFlag{Name: "newest", Usage: "only entries modified at or before `TIME`"},
		}, filterFlags()...),
		Action: runFind,
	}
}

// findMatch is one entry of find --json, with ls --json's keys and a few
// more. path_b64 carries the exact bytes of a path that is not valid UTF-8.
type findMatch struct {
	Path        string `json:"path"`
	PathB64     string `json:"path_b64,omitempty"`
	Type        string `json:"type"`
	Size        uint64 `json:"size"`
	Mode        uint32 `json:"mode"`
	Permissions string `json:"permissions"`
	MTime       string `json:"mtime"`
	UID         uint32 `json:"uid"`
	GID         uint32 `json:"gid"`
	User        string `json:"user"`
	Group       string `json:"group"`
	Inode       uint64 `json:"inode"`
	Links       uint64 `json:"links"`
	LinkTarget  string `json:"link_target,omitempty"`
}

// findResult is one snapshot's matches in find --json.
type findResult struct {
	Snapshot string      `json:"snapshot"`
	Hits     int         `json:"hits"`
	Matches  []findMatch `json:"matches"`
}

func runFind(c *cli.Context) error {
	if c.NArg() == 0 {
		return usageError(c, "missing argument PATTERN")
	}
	pats, err := snapshot.ParsePatterns(c.Args().Slice(), c.Bool("ignore-case"))
	if err != nil {
		return err
	}
	if pats.Empty() {
		return usageError(c, "the pattern is empty")
	}
	var oldest, newest time.Time
	if s := c.String("oldest"); s != "" {
		if oldest, err = parseTime(s); err != nil {
			return fmt.Errorf("--oldest: %w", err)
		}
	}
	if s := c.String("newest"); s != "" {
		if newest, err = parseTime(s); err != nil {
			return fmt.Errorf("--newest: %w", err)
		}
	}
	f, err := readFilter(c)
	if err != nil {
		return err
	}
	out := newOutput(c)
	return withStore(c, true, func(ctx context.Context, r *repo.Repo, store *pack.Store) error {
		list, err := selectSnapshots(ctx, r, c.StringSlice("snapshot"), f)
		if err != nil {
			return err
		}
		w := bufio.NewWriter(out.stdout)
		defer w.Flush()
		results := []findResult{}
		for _, sn := range list {
			res := findResult{Snapshot: sn.ID.String(), Matches: []findMatch{}}
			header := false
			err := snapshot.Walk(ctx, store, sn.Tree, func(p string, n *snapshot.Node) error {
				isDir := n.Type == snapshot.TypeDir
				if !pats.Match(p, isDir) {
					if isDir && !pats.ChildMayMatch(p) {
						return snapshot.ErrSkipDir
					}
					return nil
				}
				if !oldest.IsZero() && n.ModTime.Before(oldest) || !newest.IsZero() && n.ModTime.After(newest) {
					return nil
				}
				res.Hits++
				switch {
				case out.json:
					res.Matches = append(res.Matches, toFindMatch(p, n))
				case out.quiet:
				default:
					if !header {
						header = true
						fmt.Fprintf(w, "Found matching entries in snapshot %s from %s\n", sn.ID.Short(), localTime(sn.Time))
					}
					if c.Bool("long") {
						fmt.Fprintln(w, longLine(p, n))
					} else {
						fmt.Fprintln(w, p)
					}
				}
				return nil
			})
			if err != nil {
				if ctx.Err() != nil {
					return err
				}
				return fmt.Errorf("snapshot %s: %w", sn.ID.Short(), err)
			}
			if header {
				fmt.Fprintln(w)
			}
			if res.Hits > 0 {
				results = append(results, res)
			}
		}
		if out.json {
			w.Flush()
			return out.JSON(results)
		}
		return nil
	})
}

func toFindMatch(p string, n *snapshot.Node) findMatch {
	m := findMatch{
		Path: p, Type: n.Type, Size: n.Size, Mode: n.Mode, Permissions: modeString(n),
		MTime: n.ModTime.Local().Format(time.RFC3339Nano),
		UID:   n.UID, GID: n.GID, User: n.User, Group: n.Group, Inode: n.Inode, Links: n.Links,
	}
	if !utf8.ValidString(p) {
		m.PathB64 = base64.StdEncoding.EncodeToString([]byte(p))
	}
	if n.Type == snapshot.TypeSymlink {
		m.LinkTarget = string(n.Link)
	}
	return m
}

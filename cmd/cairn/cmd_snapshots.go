package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/snapshot"
	"github.com/urfave/cli/v2"
)

func newSnapshotsCommand() *cli.Command {
	return &cli.Command{
		Name:  "snapshots",
		Usage: "list snapshots, newest last",
		Flags: append(filterFlags(),
			&cli.IntFlag{Name: "latest", Usage: "only the last `N` snapshots of each host, cluster, component and set of paths"}),
		Action: runSnapshots,
	}
}

// filterFlags select snapshots, for "latest" and listings.
func filterFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringSliceFlag{Name: "host", Aliases: []string{"H"}, Usage: "only snapshots of `HOST` (repeatable)"},
		&cli.StringSliceFlag{Name: "tag", Usage: "only snapshots with the tags `T[,T...]` (repeatable: any of them)"},
		&cli.StringSliceFlag{Name: "path", Usage: "only snapshots including `PATH` (repeatable: all of them)"},
		&cli.StringFlag{Name: "cluster", Usage: "only snapshots of cluster `NAME`"},
		&cli.StringFlag{Name: "component", Usage: "only snapshots of components matching `GLOB`"},
		&cli.StringFlag{Name: "run", Usage: "only snapshots of run `RUN_ID`"},
	}
}

func readFilter(c *cli.Context) (snapshot.Filter, error) {
	f := snapshot.Filter{
		Hosts: c.StringSlice("host"), Tags: c.StringSlice("tag"),
		Cluster: c.String("cluster"), Component: c.String("component"), Run: c.String("run"),
	}
	if _, err := filepath.Match(f.Component, ""); err != nil {
		return f, fmt.Errorf("invalid --component pattern %q: %w", f.Component, err)
	}
	for _, p := range c.StringSlice("path") {
		abs, err := filepath.Abs(p) // backups record absolute, cleaned paths
		if err != nil {
			return f, fmt.Errorf("--path %s: %w", p, err)
		}
		f.Paths = append(f.Paths, abs)
	}
	return f, nil
}

// warnUnreadable reports a snapshot that cannot be read and is left out:
// one damaged file must not stop backups and restores of everything else.
func warnUnreadable(id repo.ID, err error) {
	fmt.Fprintf(os.Stderr, "cairn: warning: snapshot %s cannot be read and is left out: %s\n", id.Short(), oneLine(err))
}

// findSnapshot resolves an id prefix or "latest" (newest matching f).
func findSnapshot(ctx context.Context, r *repo.Repo, ref string, f snapshot.Filter) (*snapshot.Snapshot, error) {
	if ref != "latest" {
		if strings.Trim(strings.ToLower(ref), "0123456789abcdef") != "" {
			return nil, fmt.Errorf("invalid snapshot id %q: want hex digits or \"latest\"", ref)
		}
	}
	sn, err := snapshot.Find(ctx, r, ref, f, warnUnreadable)
	if errors.Is(err, repo.ErrNotFound) {
		if ref == "latest" {
			return nil, errors.New("no snapshot matches: the repository has none that passes the filters")
		}
		return nil, fmt.Errorf("no snapshot with id %s", ref)
	}
	return sn, err
}

// snapshotJSON is a snapshot as cli.md describes it: every key present,
// absent values null, empty lists [].
type snapshotJSON struct {
	ID        string            `json:"id"`
	ShortID   string            `json:"short_id"`
	Time      string            `json:"time"`
	Hostname  string            `json:"hostname"`
	Username  string            `json:"username"`
	Paths     []string          `json:"paths"`
	Tags      []string          `json:"tags"`
	Cluster   *string           `json:"cluster"`
	Component *string           `json:"component"`
	Run       *string           `json:"run"`
	Parent    *string           `json:"parent"`
	Tree      string            `json:"tree"`
	Summary   *snapshot.Summary `json:"summary"`
}

func nullable(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func emptyList(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func toJSON(sn *snapshot.Snapshot) snapshotJSON {
	j := snapshotJSON{
		ID: sn.ID.String(), ShortID: sn.ID.Short(), Time: sn.Time.Local().Format(time.RFC3339Nano),
		Hostname: sn.Hostname, Username: sn.Username,
		Paths: emptyList(sn.Paths), Tags: emptyList(sn.Tags),
		Cluster: nullable(sn.Cluster), Component: nullable(sn.Component), Run: nullable(sn.Run),
		Tree: sn.Tree.String(), Summary: sn.Summary,
	}
	if sn.Parent != nil {
		j.Parent = nullable(sn.Parent.String())
	}
	return j
}

// groupKey groups snapshots for --latest: host, cluster, component, paths.
func groupKey(sn *snapshot.Snapshot) string {
	paths := slices.Clone(sn.Paths)
	slices.Sort(paths)
	return strings.Join([]string{sn.Hostname, sn.Cluster, sn.Component, strings.Join(paths, "\x00")}, "\x01")
}

// keepLatest keeps the last n snapshots of each group, in list order.
func keepLatest(list []*snapshot.Snapshot, n int) []*snapshot.Snapshot {
	seen := map[string]int{}
	keep := make([]bool, len(list))
	for i := len(list) - 1; i >= 0; i-- {
		k := groupKey(list[i])
		if seen[k] < n {
			seen[k]++
			keep[i] = true
		}
	}
	var out []*snapshot.Snapshot
	for i, sn := range list {
		if keep[i] {
			out = append(out, sn)
		}
	}
	return out
}

func runSnapshots(c *cli.Context) error {
	if err := needArgs(c, 0, 0); err != nil {
		return err
	}
	f, err := readFilter(c)
	if err != nil {
		return err
	}
	if c.IsSet("latest") && c.Int("latest") < 1 {
		return usageError(c, "--latest must be at least 1")
	}
	out := newOutput(c)
	return withRepo(c, func(ctx context.Context, r *repo.Repo) error {
		all, err := snapshot.List(ctx, r, warnUnreadable)
		if err != nil {
			return err
		}
		var list []*snapshot.Snapshot
		for _, sn := range all {
			if f.Match(sn) {
				list = append(list, sn)
			}
		}
		if n := c.Int("latest"); n > 0 {
			list = keepLatest(list, n)
		}
		if out.json {
			js := make([]snapshotJSON, 0, len(list))
			for _, sn := range list {
				js = append(js, toJSON(sn))
			}
			return out.JSON(js)
		}
		if !out.quiet {
			printSnapshotTable(out, list)
		}
		return nil
	})
}

func printSnapshotTable(out *output, list []*snapshot.Snapshot) {
	clustered := slices.ContainsFunc(list, func(sn *snapshot.Snapshot) bool {
		return sn.Cluster != "" || sn.Component != ""
	})
	tw := tabwriter.NewWriter(out.stdout, 0, 0, 2, ' ', 0)
	header := []string{"ID", "Time", "Host", "Tags"}
	if clustered {
		header = append(header, "Cluster", "Component")
	}
	header = append(header, "Paths")
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, sn := range list {
		paths := emptyList(sn.Paths)
		first := ""
		if len(paths) > 0 {
			first = paths[0]
		}
		row := []string{sn.ID.Short(), localTime(sn.Time), sn.Hostname, strings.Join(sn.Tags, ",")}
		if clustered {
			row = append(row, sn.Cluster, sn.Component)
		}
		fmt.Fprintln(tw, strings.Join(append(row, first), "\t"))
		// Further paths go on lines of their own, under the first.
		for _, p := range paths[min(1, len(paths)):] {
			blank := make([]string, len(row))
			fmt.Fprintln(tw, strings.Join(append(blank, p), "\t"))
		}
	}
	tw.Flush()
	word := "snapshots"
	if len(list) == 1 {
		word = "snapshot"
	}
	fmt.Fprintf(out.stdout, "%d %s\n", len(list), word)
}

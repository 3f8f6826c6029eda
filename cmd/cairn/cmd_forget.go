package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/cairn-backup/cairn/cluster"
	"github.com/cairn-backup/cairn/index"
	"github.com/cairn-backup/cairn/pack"
	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/snapshot"
	"github.com/urfave/cli/v2"
)

// keepCountFlags are the counting rules, in the order restic applies them.
var keepCountFlags = []struct{ name, what string }{
	{"keep-last", "snapshots"},
	{"keep-hourly", "hourly snapshots"},
	{"keep-daily", "daily snapshots"},
	{"keep-weekly", "weekly snapshots"},
	{"keep-monthly", "monthly snapshots"},
	{"keep-yearly", "yearly snapshots"},
}

func newForgetCommand() *cli.Command {
	var flags []cli.Flag
	for _, k := range keepCountFlags {
		flags = append(flags, &cli.StringFlag{Name: k.name,
			Usage: fmt.Sprintf("keep the last `N` %s (-1 or \"unlimited\": all)", k.what)})
	}
	flags = append(flags,
		&cli.StringFlag{Name: "keep-within", Usage: "keep snapshots newer than `DURATION` (like 2y5m7d3h) before the newest snapshot"},
		&cli.StringSliceFlag{Name: "keep-tag", Usage: "keep snapshots that have all the tags `T[,T...]` (repeatable: any of them)"},
		&cli.StringFlag{Name: "group-by", Value: "host,cluster,component,paths",
			Usage: "apply the policy to each group of snapshots sharing `FIELDS`: host, cluster, component, paths, tags (\"\": one group)"},
		&cli.BoolFlag{Name: "dry-run", Aliases: []string{"n"}, Usage: "show what would be removed, remove nothing"},
		&cli.BoolFlag{Name: "prune", Usage: "then remove the data no snapshot references any more (see \"cairn prune\")"},
		&cli.StringFlag{Name: "max-unused", Value: "5", Usage: "with --prune: leave up to `PERCENT` of the repository unused rather than repack for it"},
		&cli.StringFlag{Name: "config", Usage: "apply the retention of the cluster file `FILE` to its cluster's snapshots, then remove the records of runs with no snapshot left"},
	)
	return &cli.Command{
		Name:      "forget",
		Usage:     "remove snapshots, by id or by a retention policy",
		ArgsUsage: "[ID...]",
		Description: "Removes the snapshots named, or applies the --keep-* policy to each group of\n" +
			"snapshots that pass the filters: a snapshot is kept if any rule keeps it.\n" +
			"Only the snapshots go; the data they alone referenced stays until \"cairn prune\"\n" +
			"(or --prune, which runs it under the same lock).\n\n" +
			"With --config FILE, the policy is the file's retention (unless --keep-* flags\n" +
			"are given), applied to the snapshots of the file's cluster only, grouped by\n" +
			"host (node), cluster and component unless --group-by says otherwise. Then the\n" +
			"records of finished runs none of whose snapshots is left are removed, as are\n" +
			"those of runs that saved no snapshot and are older than every snapshot left.",
		Flags:  append(flags, filterFlags()...),
		Action: runForget,
	}
}

// readPolicy reads the --keep-* flags.
func readPolicy(c *cli.Context) (snapshot.Policy, error) {
	var p snapshot.Policy
	counts := []*int{&p.Last, &p.Hourly, &p.Daily, &p.Weekly, &p.Monthly, &p.Yearly}
	for i, k := range keepCountFlags {
		if !c.IsSet(k.name) {
			continue
		}
		n, err := parseKeepCount(c.String(k.name))
		if err != nil {
			return p, usageError(c, "--%s: %v", k.name, err)
		}
		*counts[i] = n
	}
	if c.IsSet("keep-within") {
		d, err := snapshot.ParseDuration(c.String("keep-within"))
		if err != nil {
			return p, usageError(c, "--keep-within: %v", err)
		}
		if d.Negative() {
			return p, usageError(c, "--keep-within: %s is negative", c.String("keep-within"))
		}
		p.Within = d
	}
	for _, s := range c.StringSlice("keep-tag") {
		p.Tags = append(p.Tags, snapshot.ParseTagList(s))
	}
	return p, nil
}

// parseKeepCount reads N of --keep-*: a count, or -1 or "unlimited" for all.
func parseKeepCount(s string) (int, error) {
	if s == "unlimited" {
		return snapshot.Unlimited, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < snapshot.Unlimited {
		return 0, fmt.Errorf("invalid count %q: want a number, or -1 or \"unlimited\" for all", s)
	}
	return n, nil
}

// forgetGroup is one group's outcome, as cli.md gives it for --json.
type forgetGroup struct {
	Key     groupKeyJSON   `json:"group_key"`
	Keep    []snapshotJSON `json:"keep"`
	Remove  []snapshotJSON `json:"remove"`
	Reasons []reasonJSON   `json:"reasons"`
}

type reasonJSON struct {
	Snapshot snapshotJSON `json:"snapshot"`
	Matches  []string     `json:"matches"`
}

// groupKeyJSON holds only the group-by fields, in cli.md's order.
type groupKeyJSON struct {
	by  snapshot.GroupBy
	key snapshot.GroupKey
}

func (g groupKeyJSON) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	add := func(name string, v any) error {
		val, err := json.Marshal(v)
		if err != nil {
			return err
		}
		if b.Len() > 1 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%q:", name)
		b.Write(val)
		return nil
	}
	var err error
	if g.by.Host {
		err = errors.Join(err, add("host", g.key.Host))
	}
	if g.by.Cluster {
		err = errors.Join(err, add("cluster", nullable(g.key.Cluster)))
	}
	if g.by.Component {
		err = errors.Join(err, add("component", nullable(g.key.Component)))
	}
	if g.by.Paths {
		err = errors.Join(err, add("paths", emptyList(g.key.Paths)))
	}
	if g.by.Tags {
		err = errors.Join(err, add("tags", emptyList(g.key.Tags)))
	}
	b.WriteByte('}')
	return b.Bytes(), err
}

func toJSONList(list []*snapshot.Snapshot) []snapshotJSON {
	js := make([]snapshotJSON, 0, len(list))
	for _, sn := range list {
		js = append(js, toJSON(sn))
	}
	return js
}

func runForget(c *cli.Context) error {
	policy, err := readPolicy(c)
	if err != nil {
		return err
	}
	by, err := snapshot.ParseGroupBy(c.String("group-by"))
	if err != nil {
		return usageError(c, "--group-by: %v", err)
	}
	f, err := readFilter(c)
	if err != nil {
		return err
	}
	ids := c.Args().Slice()
	var cfg *cluster.Config
	if name := c.String("config"); name != "" {
		if len(ids) > 0 {
			return usageError(c, "--config applies the cluster file's retention; it does not go with snapshot ids")
		}
		if cfg, err = cluster.Load(name); err != nil {
			return err
		}
		if policy.Empty() {
			if policy, err = cfg.Retention.Policy(); err != nil {
				return fmt.Errorf("%s: retention: %w", filepath.Base(name), err)
			}
		}
		if policy.Empty() {
			return usageError(c, "%s has no retention and no --keep-* policy is given: refusing to remove anything", filepath.Base(name))
		}
		if f.Cluster != "" && f.Cluster != cfg.Cluster {
			return usageError(c, "--cluster %s, but %s describes cluster %s", f.Cluster, filepath.Base(name), cfg.Cluster)
		}
		f.Cluster = cfg.Cluster
		if !c.IsSet("group-by") {
			// Per component and node: a files component whose paths
			// changed is still one component.
			by = snapshot.GroupBy{Host: true, Cluster: true, Component: true}
		}
		if err := useClusterRepository(c, cfg); err != nil {
			return err
		}
	}
	switch {
	case len(ids) == 0 && policy.Empty():
		return usageError(c, "no snapshot ids and no --keep-* policy given: refusing to remove anything")
	case len(ids) > 0 && !policy.Empty():
		return usageError(c, "give snapshot ids or a --keep-* policy, not both")
	case len(ids) > 0:
		for _, name := range []string{"host", "tag", "path", "cluster", "component", "run", "group-by"} {
			if c.IsSet(name) {
				return usageError(c, "--%s selects snapshots for a policy; it does not apply to snapshot ids", name)
			}
		}
	}
	out := newOutput(c)
	dryRun := c.Bool("dry-run")
	prune := c.Bool("prune")
	maxUnused, err := parseMaxUnused(c.String("max-unused"))
	if err != nil {
		return usageError(c, "%v", err)
	}
	return withRepo(c, func(ctx context.Context, r *repo.Repo) error {
		// Removing needs the exclusive lock, so that no backup in progress
		// finds its parent gone and no prune runs meanwhile; a dry run only
		// reads, and must not stop backups, unless it plans a prune too.
		return r.WithLock(ctx, !dryRun || prune, func(ctx context.Context) error {
			var err error
			if len(ids) > 0 {
				err = forgetIDs(ctx, r, out, ids, dryRun)
			} else {
				var all, removed []*snapshot.Snapshot
				all, removed, err = forgetPolicy(ctx, r, out, policy, by, f, dryRun)
				if err == nil && cfg != nil {
					err = forgetRuns(ctx, r, out, cfg.Cluster, all, removed, dryRun)
				}
			}
			if err != nil || !prune {
				return err
			}
			idx, err := index.Load(ctx, r, index.Options{CacheDir: cacheDir(c)})
			if err != nil {
				return fmt.Errorf("load index: %w", err)
			}
			defer idx.Close()
			store := pack.NewStore(r, idx)
			store.SetConnections(connections(c))
			sum, err := pruneRepository(ctx, c, r, store, pruneOptions{DryRun: dryRun, MaxUnused: maxUnused})
			if err != nil {
				return err
			}
			return printPruneSummary(out, sum)
		})
	})
}

// forgetIDs removes the snapshots named. All ids are resolved first: a typo
// removes nothing.
func forgetIDs(ctx context.Context, r *repo.Repo, out *output, refs []string, dryRun bool) error {
	var list []*snapshot.Snapshot
	for _, ref := range refs {
		if strings.Trim(strings.ToLower(ref), "0123456789abcdef") != "" {
			return fmt.Errorf("invalid snapshot id %q: want hex digits", ref)
		}
		id, err := r.FindID(ctx, repo.SnapshotFile, ref)
		if errors.Is(err, repo.ErrNotFound) {
			return fmt.Errorf("no snapshot with id %s", ref)
		}
		if err != nil {
			return err
		}
		if slices.ContainsFunc(list, func(sn *snapshot.Snapshot) bool { return sn.ID == id }) {
			continue
		}
		sn, err := snapshot.Load(ctx, r, id)
		if errors.Is(err, repo.ErrNotFound) {
			return fmt.Errorf("no snapshot with id %s", ref) // a full id is not looked up
		}
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			// A damaged snapshot can still be forgotten: that is how one
			// gets rid of it.
			fmt.Fprintf(out.stderr, "cairn: warning: snapshot %s cannot be read (%s); removing it anyway\n", id.Short(), oneLine(err))
			sn = &snapshot.Snapshot{ID: id}
		}
		list = append(list, sn)
	}
	if !out.quiet && !out.json {
		fmt.Fprintf(out.stdout, "remove %s:\n", countSnapshots(len(list)))
		printForgetTable(out, list, nil)
	}
	if err := removeSnapshots(ctx, r, out, list, dryRun); err != nil {
		return err
	}
	if out.json {
		// Explicit ids form one group without a key.
		return out.JSON([]forgetGroup{{Key: groupKeyJSON{}, Keep: []snapshotJSON{},
			Remove: toJSONList(list), Reasons: []reasonJSON{}}})
	}
	return nil
}

// forgetPolicy applies p to each group of the snapshots f selects. It
// returns every snapshot of the repository and those it removed (or with
// dryRun, would remove).
func forgetPolicy(ctx context.Context, r *repo.Repo, out *output, p snapshot.Policy, by snapshot.GroupBy, f snapshot.Filter, dryRun bool) (all, remove []*snapshot.Snapshot, err error) {
	all, err = snapshot.List(ctx, r, warnUnreadable)
	if err != nil {
		return nil, nil, err
	}
	var list []*snapshot.Snapshot
	for _, sn := range all {
		if f.Match(sn) {
			list = append(list, sn)
		}
	}
	out.Verbosef("applying policy: %s\n", p)
	now := time.Now()
	groups := []forgetGroup{}
	for i, g := range snapshot.GroupSnapshots(list, by) {
		d := p.Apply(g.Snapshots, now, time.Local)
		remove = append(remove, d.Remove...)
		fg := forgetGroup{Key: groupKeyJSON{by: by, key: g.Key},
			Keep: toJSONList(d.Keep), Remove: toJSONList(d.Remove), Reasons: []reasonJSON{}}
		for _, reason := range d.Reasons {
			fg.Reasons = append(fg.Reasons, reasonJSON{Snapshot: toJSON(reason.Snapshot), Matches: reason.Matches})
		}
		groups = append(groups, fg)
		if out.quiet || out.json {
			continue
		}
		if i > 0 {
			fmt.Fprintln(out.stdout)
		}
		if by == (snapshot.GroupBy{}) {
			fmt.Fprintln(out.stdout, "all snapshots:")
		} else {
			fmt.Fprintf(out.stdout, "snapshots of %s:\n", g.Key.String(by))
		}
		fmt.Fprintf(out.stdout, "keep %s:\n", countSnapshots(len(d.Keep)))
		reasons := map[repo.ID][]string{}
		for _, reason := range d.Reasons {
			reasons[reason.Snapshot.ID] = reason.Matches
		}
		printForgetTable(out, d.Keep, reasons)
		if len(d.Remove) > 0 {
			fmt.Fprintf(out.stdout, "remove %s:\n", countSnapshots(len(d.Remove)))
			printForgetTable(out, d.Remove, nil)
		}
	}
	if len(groups) == 0 {
		out.Printf("no snapshots match\n")
	}
	if err := removeSnapshots(ctx, r, out, remove, dryRun); err != nil {
		return nil, nil, err
	}
	if out.json {
		return all, remove, out.JSON(groups)
	}
	return all, remove, nil
}

// forgetRuns removes the records of cluster's runs that no snapshot left
// in the repository (all but removed) belongs to. With --json the output
// stays the array of groups; what went is said only in text.
func forgetRuns(ctx context.Context, r *repo.Repo, out *output, clusterName string, all, removed []*snapshot.Snapshot, dryRun bool) error {
	gone := map[repo.ID]bool{}
	for _, sn := range removed {
		gone[sn.ID] = true
	}
	var left []*snapshot.Snapshot
	for _, sn := range all {
		if !gone[sn.ID] {
			left = append(left, sn)
		}
	}
	runs, err := cluster.Unreferenced(ctx, r, clusterName, left, time.Now(), warnUnreadableRun)
	if err != nil {
		return err
	}
	verb := "removed"
	if dryRun {
		verb = "would remove"
	}
	if len(runs) > 0 {
		out.Printf("\n")
	}
	for i, rr := range runs {
		if !dryRun {
			if err := cluster.RemoveRecords(ctx, r, rr); err != nil {
				return fmt.Errorf("%w (the records of %d runs removed before)", err, i)
			}
		}
		out.Printf("%s run %s of %s (%s): no snapshot of it is left\n", verb, rr.Run.ID, localTime(rr.Run.Started), rr.Run.Phase)
	}
	return nil
}

// removeSnapshots deletes the snapshot files of list, unless dryRun, and
// says how many went.
func removeSnapshots(ctx context.Context, r *repo.Repo, out *output, list []*snapshot.Snapshot, dryRun bool) error {
	if dryRun {
		out.Printf("\nwould remove %s (dry run)\n", countSnapshots(len(list)))
		return nil
	}
	for i, sn := range list {
		if err := r.RemoveFile(ctx, repo.SnapshotFile, sn.ID); err != nil {
			return fmt.Errorf("remove snapshot %s (%d of %d removed before it): %w", sn.ID.Short(), i, len(list), err)
		}
		out.Verbosef("removed snapshot %s\n", sn.ID.Short())
	}
	out.Printf("\nremoved %s\n", countSnapshots(len(list)))
	return nil
}

func countSnapshots(n int) string {
	if n == 1 {
		return "1 snapshot"
	}
	return fmt.Sprintf("%d snapshots", n)
}

// printForgetTable lists snapshots, newest first, with the reasons to keep
// them when reasons is not nil. Reasons and paths after the first go on
// lines of their own.
func printForgetTable(out *output, list []*snapshot.Snapshot, reasons map[repo.ID][]string) {
	clustered := slices.ContainsFunc(list, func(sn *snapshot.Snapshot) bool {
		return sn.Cluster != "" || sn.Component != ""
	})
	tw := tabwriter.NewWriter(out.stdout, 0, 0, 2, ' ', 0)
	header := []string{"ID", "Time", "Host", "Tags"}
	if clustered {
		header = append(header, "Cluster", "Component")
	}
	if reasons != nil {
		header = append(header, "Reasons")
	}
	fmt.Fprintln(tw, strings.Join(append(header, "Paths"), "\t"))
	for _, sn := range list {
		when := "" // unknown for a snapshot that cannot be read
		if !sn.Time.IsZero() {
			when = localTime(sn.Time)
		}
		row := []string{sn.ID.Short(), when, sn.Hostname, strings.Join(sn.Tags, ",")}
		if clustered {
			row = append(row, sn.Cluster, sn.Component)
		}
		// The multi-line columns: reasons (if shown), then paths.
		var columns [][]string
		if reasons != nil {
			columns = append(columns, reasons[sn.ID])
		}
		columns = append(columns, sn.Paths)
		lines := 1
		for _, col := range columns {
			lines = max(lines, len(col))
		}
		for l := range lines {
			line := row
			if l > 0 {
				line = make([]string, len(row))
			}
			line = slices.Clone(line)
			for _, col := range columns {
				cell := ""
				if l < len(col) {
					cell = col[l]
				}
				line = append(line, cell)
			}
			fmt.Fprintln(tw, strings.Join(line, "\t"))
		}
	}
	tw.Flush()
}

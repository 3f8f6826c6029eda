package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/cairn-backup/cairn/cluster"
	"github.com/cairn-backup/cairn/repo"
	"github.com/urfave/cli/v2"
)

func newStatusCommand() *cli.Command {
	return &cli.Command{
		Name:      "status",
		Usage:     "show the phase of each component of a cluster run",
		ArgsUsage: "[RUN_ID|latest]",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "close", Usage: "close the run: components that never reported are missing from now on"},
			&cli.StringFlag{Name: "cluster", Usage: "with latest: the latest run of cluster `NAME`"},
		},
		Action: runStatus,
	}
}

func runStatus(c *cli.Context) error {
	if err := needArgs(c, 0, 1); err != nil {
		return err
	}
	ref := c.Args().First()
	if ref == "" {
		ref = "latest"
	}
	out := newOutput(c)
	return withRepo(c, func(ctx context.Context, r *repo.Repo) error {
		run, err := findRun(ctx, r, ref, c.String("cluster"))
		if err != nil {
			return err
		}
		if c.Bool("close") {
			err := r.WithLock(ctx, false, func(ctx context.Context) error {
				return cluster.Close(ctx, r, run, time.Now())
			})
			if err != nil {
				return fmt.Errorf("close run %s: %w", run.ID, err)
			}
			if run, err = findRun(ctx, r, run.ID, ""); err != nil {
				return err
			}
		}
		if out.json {
			return out.JSON(toRunJSON(run))
		}
		if !out.quiet {
			printRun(out, run)
		}
		return nil
	})
}

func findRun(ctx context.Context, r *repo.Repo, ref, clusterName string) (*cluster.Run, error) {
	run, err := cluster.FindRun(ctx, r, ref, clusterName, time.Now(), warnUnreadableRun)
	if errors.Is(err, cluster.ErrNoRun) && ref != "latest" {
		return nil, fmt.Errorf("no run with id %s", ref)
	}
	return run, err
}

// warnUnreadableRun reports a run record that cannot be read and is left out.
func warnUnreadableRun(id repo.ID, err error) {
	fmt.Fprintf(os.Stderr, "cairn: warning: run record %s cannot be read and is left out: %s\n", id.Short(), oneLine(err))
}

// runJSON is a run as cluster.md describes it; absent values are null.
type runJSON struct {
	// MessageType is "summary" at the end of a cluster backup, and absent
	// from status.
	MessageType string          `json:"message_type,omitempty"`
	ID          string          `json:"id"`
	Cluster     string          `json:"cluster"`
	Phase       string          `json:"phase"`
	Started     string          `json:"started"`
	Finished    *string         `json:"finished"`
	Components  []componentJSON `json:"components"`
}

type componentJSON struct {
	Name            string  `json:"name"`
	Node            *string `json:"node"`
	Kind            string  `json:"kind"`
	Phase           string  `json:"phase"`
	SnapshotID      *string `json:"snapshot_id"`
	Bytes           int64   `json:"bytes"`
	DurationSeconds float64 `json:"duration_seconds"`
	Error           *string `json:"error"`
}

func jsonTime(t time.Time) string { return t.Local().Format(time.RFC3339Nano) }

func toRunJSON(run *cluster.Run) runJSON {
	j := runJSON{ID: run.ID, Cluster: run.Cluster, Phase: run.Phase, Started: jsonTime(run.Started),
		Components: []componentJSON{}}
	if !run.Finished.IsZero() {
		f := jsonTime(run.Finished)
		j.Finished = &f
	}
	for _, c := range run.Components {
		j.Components = append(j.Components, componentJSON{
			Name: c.Name, Node: nullable(c.Node), Kind: c.Kind, Phase: c.Phase,
			SnapshotID: nullable(c.SnapshotID), Bytes: c.Bytes, DurationSeconds: c.Duration,
			Error: nullable(c.Error),
		})
	}
	return j
}

func printRun(out *output, run *cluster.Run) {
	out.Printf("run %s of cluster %s: %s\n", run.ID, run.Cluster, run.Phase)
	finished := "-"
	if !run.Finished.IsZero() {
		finished = localTime(run.Finished)
	}
	closed := ""
	if run.Closed {
		closed = " (closed)"
	}
	out.Printf("started %s, finished %s%s\n\n", localTime(run.Started), finished, closed)
	tw := tabwriter.NewWriter(out.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "Component\tNode\tKind\tPhase\tSnapshot\tSize\tDuration\tError")
	for _, c := range run.Components {
		node, id, size, dur := orDash(c.Node), "-", "-", "-"
		if c.SnapshotID != "" {
			id = c.SnapshotID[:min(8, len(c.SnapshotID))]
			size = formatBytes(c.Bytes)
		}
		if c.Duration > 0 {
			dur = formatDuration(time.Duration(c.Duration * float64(time.Second)))
		}
		fmt.Fprintln(tw, strings.Join([]string{c.Name, node, orDash(c.Kind), c.Phase, id, size, dur, c.Error}, "\t"))
	}
	tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

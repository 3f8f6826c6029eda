package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cairn-backup/cairn/pack"
	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/snapshot"
	"github.com/urfave/cli/v2"
)

func newRestoreCommand() *cli.Command {
	return &cli.Command{
		Name:      "restore",
		Usage:     "restore a snapshot into a directory",
		ArgsUsage: "ID|latest",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "target", Aliases: []string{"t"}, Usage: "restore into `DIR` (required)"},
			&cli.StringSliceFlag{Name: "include", Aliases: []string{"i"}, Usage: "restore only entries matching `GLOB` (repeatable)"},
			&cli.StringSliceFlag{Name: "exclude", Aliases: []string{"e"}, Usage: "do not restore entries matching `GLOB` (repeatable)"},
			&cli.BoolFlag{Name: "verify", Usage: "read what was written back and compare"},
			&cli.StringFlag{Name: "overwrite", Value: snapshot.OverwriteAlways, Usage: "`POLICY` for existing files: always, if-changed or never"},
			&cli.BoolFlag{Name: "delete", Usage: "remove files in the target that are not in the snapshot"},
			&cli.StringFlag{Name: "as-of", Usage: "restore the newest snapshot at or before `TIME` (\"YYYY-MM-DD HH:MM:SS\" or RFC 3339)"},
		}, filterFlags()...),
		Action: runRestore,
	}
}

type restoreSummary struct {
	MessageType     string  `json:"message_type"`
	SnapshotID      string  `json:"snapshot_id"`
	Target          string  `json:"target"`
	FilesRestored   int     `json:"files_restored"`
	DirsRestored    int     `json:"dirs_restored"`
	OthersRestored  int     `json:"others_restored"`
	BytesRestored   int64   `json:"bytes_restored"`
	FilesSkipped    int     `json:"files_skipped"`
	FilesDeleted    int     `json:"files_deleted"`
	FilesVerified   int     `json:"files_verified"`
	Errors          int     `json:"errors"`
	DurationSeconds float64 `json:"duration_seconds"`
}

func runRestore(c *cli.Context) error {
	if err := needArgs(c, 0, 1); err != nil {
		return err
	}
	ref := c.Args().First()
	var asOf time.Time
	if s := c.String("as-of"); s != "" {
		t, err := parseTime(s)
		if err != nil {
			return fmt.Errorf("--as-of: %w", err)
		}
		asOf = asOfLimit(t)
		if ref != "" && ref != "latest" {
			return usageError(c, "--as-of chooses the snapshot: give no ID, or \"latest\"")
		}
	} else if ref == "" {
		return usageError(c, "missing argument ID|latest")
	}
	target := c.String("target")
	if target == "" {
		return usageError(c, "--target is required")
	}
	f, err := readFilter(c)
	if err != nil {
		return err
	}
	out := newOutput(c)
	return withStore(c, true, func(ctx context.Context, r *repo.Repo, store *pack.Store) error {
		var sn *snapshot.Snapshot
		if asOf.IsZero() {
			sn, err = findSnapshot(ctx, r, ref, f)
		} else {
			sn, err = findAsOf(ctx, r, asOf, f)
		}
		if err != nil {
			return err
		}
		out.Verbosef("restoring snapshot %s of %v at %s to %s\n", sn.ID.Short(), sn.Paths, localTime(sn.Time), target)
		rep := out.reporter("written")
		start := time.Now()
		st, err := snapshot.Restore(ctx, store, sn, snapshot.RestoreOptions{
			Target: target, Include: c.StringSlice("include"), Exclude: c.StringSlice("exclude"),
			Verify: c.Bool("verify"), Overwrite: c.String("overwrite"), Delete: c.Bool("delete"),
			Reporter: rep,
		})
		rep.Done()
		if err != nil && !errors.Is(err, snapshot.ErrRestoreIncomplete) {
			return err
		}
		if perr := printRestoreSummary(out, sn, target, st, time.Since(start)); perr != nil {
			return perr
		}
		if err != nil {
			return fmt.Errorf("restore of snapshot %s to %s is incomplete: %d entries failed", sn.ID.Short(), target, st.Errors)
		}
		return nil
	})
}

// asOfLimit makes a time given to the second cover that whole second, so a
// snapshot shown as 12:00:00 (taken at 12:00:00.4) is "at or before 12:00:00".
func asOfLimit(t time.Time) time.Time {
	if t.Nanosecond() == 0 {
		return t.Add(time.Second - time.Nanosecond)
	}
	return t
}

// findAsOf returns the newest snapshot matching f taken at or before limit.
func findAsOf(ctx context.Context, r *repo.Repo, limit time.Time, f snapshot.Filter) (*snapshot.Snapshot, error) {
	list, err := snapshot.List(ctx, r, warnUnreadable)
	if err != nil {
		return nil, err
	}
	for i := len(list) - 1; i >= 0; i-- {
		if sn := list[i]; !sn.Time.After(limit) && f.Match(sn) {
			return sn, nil
		}
	}
	return nil, fmt.Errorf("no snapshot matches at or before %s", localTime(limit))
}

func printRestoreSummary(out *output, sn *snapshot.Snapshot, target string, st snapshot.RestoreStats, d time.Duration) error {
	if out.json {
		return out.JSON(restoreSummary{
			MessageType: "summary", SnapshotID: sn.ID.String(), Target: target,
			FilesRestored: st.Files, DirsRestored: st.Dirs, OthersRestored: st.Others, BytesRestored: st.Bytes,
			FilesSkipped: st.Skipped, FilesDeleted: st.Deleted, FilesVerified: st.Verified, Errors: st.Errors,
			DurationSeconds: d.Seconds(),
		})
	}
	out.Printf("restored snapshot %s to %s: %d files, %d dirs, %s in %s\n",
		sn.ID.Short(), target, st.Files, st.Dirs, formatBytes(st.Bytes), formatDuration(d))
	if st.Others > 0 {
		out.Printf("%d other entries (symlinks, devices, fifos)\n", st.Others)
	}
	if st.Skipped > 0 {
		out.Printf("%d files left alone by the --overwrite policy\n", st.Skipped)
	}
	if st.Deleted > 0 {
		out.Printf("%d files deleted from the target\n", st.Deleted)
	}
	if st.Verified > 0 {
		out.Printf("%d files verified\n", st.Verified)
	}
	return nil
}

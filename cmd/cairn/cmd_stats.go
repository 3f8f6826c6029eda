package main

import (
	"context"
	"fmt"
	"slices"

	"github.com/cairn-backup/cairn/pack"
	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/snapshot"
	"github.com/urfave/cli/v2"
)

const (
	statsRestoreSize = "restore-size"
	statsRawData     = "raw-data"
)

func newStatsCommand() *cli.Command {
	return &cli.Command{
		Name:  "stats",
		Usage: "show how much the snapshots hold and what they take in the repository",
		Description: `With no ID, every snapshot that passes the filters is counted.

restore-size (the default) counts what restoring each snapshot writes: its
entries (files, directories, links and the rest, as restic counts them) and
the size of its files; a file hard-linked several times counts once per
snapshot, two files with the same content count twice.

raw-data counts the blobs the snapshots reference, each once however many
snapshots share it: their size in the repository (compressed and
encrypted), what they would take uncompressed, and how much the data was
deduplicated (restore size over the size of the unique content).`,
		ArgsUsage: "[ID...]",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "mode", Value: statsRestoreSize, Usage: "what to count: `MODE` restore-size or raw-data"},
		}, filterFlags()...),
		Action: runStats,
	}
}

// statsJSON is stats --json: the keys of restic's stats, and a few more.
type statsJSON struct {
	TotalSize      uint64 `json:"total_size"`
	TotalFileCount int64  `json:"total_file_count"`
	SnapshotsCount int    `json:"snapshots_count"`
	// raw-data only
	TotalUncompressedSize  *uint64  `json:"total_uncompressed_size,omitempty"`
	CompressionRatio       *float64 `json:"compression_ratio,omitempty"`
	CompressionSpaceSaving *float64 `json:"compression_space_saving,omitempty"`
	TotalBlobCount         *int64   `json:"total_blob_count,omitempty"`
	RestoreSize            *uint64  `json:"restore_size,omitempty"`
	DeduplicationRatio     *float64 `json:"deduplication_ratio,omitempty"`
}

func runStats(c *cli.Context) error {
	mode := c.String("mode")
	if mode != statsRestoreSize && mode != statsRawData {
		return usageError(c, "invalid --mode %q: want restore-size or raw-data", mode)
	}
	f, err := readFilter(c)
	if err != nil {
		return err
	}
	out := newOutput(c)
	return withStore(c, true, func(ctx context.Context, r *repo.Repo, store *pack.Store) error {
		list, err := selectSnapshots(ctx, r, c.Args().Slice(), f)
		if err != nil {
			return err
		}
		counter := snapshot.NewStatsCounter(store, mode == statsRawData)
		for _, sn := range list {
			if err := counter.Add(ctx, sn); err != nil {
				return err
			}
		}
		s := counter.Stats()
		if out.json {
			return out.JSON(toStatsJSON(s, mode))
		}
		if !out.quiet {
			printStats(out, s, mode)
		}
		return nil
	})
}

func toStatsJSON(s snapshot.Stats, mode string) statsJSON {
	j := statsJSON{TotalSize: s.RestoreSize, TotalFileCount: s.Entries, SnapshotsCount: s.Snapshots}
	if mode == statsRawData {
		comp, saving, dedup := ratios(s)
		j.TotalSize = s.StoredSize
		j.TotalUncompressedSize = &s.UncompressedSize
		j.CompressionRatio = &comp
		j.CompressionSpaceSaving = &saving
		j.TotalBlobCount = &s.Blobs
		j.RestoreSize = &s.RestoreSize
		j.DeduplicationRatio = &dedup
	}
	return j
}

// ratios returns the compression ratio, the space compression saves in
// percent, and the deduplication ratio; 0 where nothing was counted.
func ratios(s snapshot.Stats) (comp, saving, dedup float64) {
	if s.StoredSize > 0 {
		comp = float64(s.UncompressedSize) / float64(s.StoredSize)
	}
	if s.UncompressedSize > 0 {
		saving = 100 * (1 - float64(s.StoredSize)/float64(s.UncompressedSize))
	}
	if s.DataSize > 0 {
		dedup = float64(s.RestoreSize) / float64(s.DataSize)
	}
	return comp, saving, dedup
}

func printStats(out *output, s snapshot.Stats, mode string) {
	row := func(name, value string) { fmt.Fprintf(out.stdout, "%24s:  %s\n", name, value) }
	fmt.Fprintf(out.stdout, "Stats in %s mode:\n", mode)
	row("Snapshots processed", fmt.Sprint(s.Snapshots))
	if mode == statsRestoreSize {
		row("Total File Count", fmt.Sprint(s.Entries))
		row("Total Size", formatBytes(int64(s.RestoreSize)))
		return
	}
	comp, saving, dedup := ratios(s)
	row("Total Blob Count", fmt.Sprint(s.Blobs))
	row("Total File Count", fmt.Sprint(s.Entries))
	row("Total Uncompressed Size", formatBytes(int64(s.UncompressedSize)))
	row("Total Size", formatBytes(int64(s.StoredSize)))
	row("Compression Ratio", fmt.Sprintf("%.2fx", comp))
	row("Compression Space Saving", fmt.Sprintf("%.2f %%", saving))
	row("Restore Size", formatBytes(int64(s.RestoreSize)))
	row("Deduplication Ratio", fmt.Sprintf("%.2fx", dedup))
}

// selectSnapshots returns the snapshots named by refs (ids or "latest" with
// f), or every snapshot that passes f when there are none: each once,
// oldest first.
func selectSnapshots(ctx context.Context, r *repo.Repo, refs []string, f snapshot.Filter) ([]*snapshot.Snapshot, error) {
	if len(refs) == 0 {
		all, err := snapshot.List(ctx, r, warnUnreadable)
		if err != nil {
			return nil, err
		}
		var list []*snapshot.Snapshot
		for _, sn := range all {
			if f.Match(sn) {
				list = append(list, sn)
			}
		}
		return list, nil
	}
	var list []*snapshot.Snapshot
	seen := map[repo.ID]bool{}
	for _, ref := range refs {
		sn, err := findSnapshot(ctx, r, ref, f)
		if err != nil {
			return nil, err
		}
		if !seen[sn.ID] {
			seen[sn.ID] = true
			list = append(list, sn)
		}
	}
	slices.SortStableFunc(list, func(a, b *snapshot.Snapshot) int { return a.Time.Compare(b.Time) })
	return list, nil
}

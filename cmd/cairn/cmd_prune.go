package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/cairn-backup/cairn/index"
	"github.com/cairn-backup/cairn/pack"
	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/snapshot"
	"github.com/urfave/cli/v2"
)

func newPruneCommand() *cli.Command {
	return &cli.Command{
		Name:  "prune",
		Usage: "remove data no snapshot references, repack packs that are mostly unused and merge small ones",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "dry-run", Aliases: []string{"n"}, Usage: "print what would be removed, change nothing"},
			&cli.StringFlag{Name: "max-unused", Value: "5", Usage: "leave up to `PERCENT` of the repository unused rather than repack for it (0 to 100, or \"unlimited\": repack nothing, small packs included)"},
		},
		Action: runPrune,
	}
}

// pruneOptions are the choices of a prune, for prune and forget --prune.
type pruneOptions struct {
	DryRun    bool
	MaxUnused float64 // percent
}

// parseMaxUnused reads --max-unused: a percentage, with or without "%".
func parseMaxUnused(s string) (float64, error) {
	s = strings.TrimSpace(s)
	if s == "unlimited" {
		return 100, nil
	}
	v, err := strconv.ParseFloat(strings.TrimSuffix(s, "%"), 64)
	if err != nil || v < 0 || v > 100 {
		return 0, fmt.Errorf("invalid --max-unused %q: want a percentage from 0 to 100", s)
	}
	return v, nil
}

// pruneSummary is what a prune reports; with --json, one line on stdout.
type pruneSummary struct {
	MessageType string `json:"message_type"`
	DryRun      bool   `json:"dry_run"`
	Snapshots   int    `json:"snapshots"`
	pack.PruneStats
	BytesFreed      int64   `json:"bytes_freed"`
	DurationSeconds float64 `json:"duration_seconds"`
}

func runPrune(c *cli.Context) error {
	if err := needArgs(c, 0, 0); err != nil {
		return err
	}
	maxUnused, err := parseMaxUnused(c.String("max-unused"))
	if err != nil {
		return usageError(c, "%v", err)
	}
	opts := pruneOptions{DryRun: c.Bool("dry-run"), MaxUnused: maxUnused}
	out := newOutput(c)
	return withRepo(c, func(ctx context.Context, r *repo.Repo) error {
		// Exclusive even for a dry run: a backup running meanwhile would
		// show its packs as unreferenced ones.
		return r.WithLock(ctx, true, func(ctx context.Context) error {
			idx, err := index.Load(ctx, r, index.Options{CacheDir: cacheDir(c)})
			if err != nil {
				return fmt.Errorf("load index: %w", err)
			}
			defer idx.Close()
			store := pack.NewStore(r, idx)
			store.SetConnections(connections(c))
			sum, err := pruneRepository(ctx, c, r, store, opts)
			if err != nil {
				return err
			}
			return printPruneSummary(out, sum)
		})
	})
}

// pruneRepository removes what no snapshot references from the repository
// and repacks packs that are mostly unused (see pack.PlanPrune). The caller
// holds the exclusive lock and prints the summary it returns. store's index
// is out of date afterwards.
func pruneRepository(ctx context.Context, c *cli.Context, r *repo.Repo, store *pack.Store, opts pruneOptions) (*pruneSummary, error) {
	start := time.Now()
	out := newOutput(c)
	out.Verbosef("loading snapshots\n")
	snaps, err := snapshot.List(ctx, r, nil)
	if err != nil {
		return nil, damaged(ctx, err)
	}
	out.Verbosef("finding the data of %d snapshots\n", len(snaps))
	used, err := snapshot.UsedBlobs(ctx, store, snaps)
	if err != nil {
		return nil, damaged(ctx, err)
	}
	plan, err := store.PlanPrune(ctx, used, pack.PruneOptions{MaxUnused: opts.MaxUnused})
	if err != nil {
		return nil, damaged(ctx, err)
	}
	for _, a := range plan.Actions() {
		verb := a.Action
		if opts.DryRun {
			verb = "would " + verb
		}
		out.Verbosef("%s pack %s (%s, %s in use)\n", verb, a.Pack.Short(), formatBytes(a.Size), formatBytes(a.Used))
	}
	if !opts.DryRun && !plan.Empty() {
		progress, done := out.pruneProgress()
		err := store.Prune(ctx, plan, progress)
		done()
		if err != nil {
			return nil, fmt.Errorf("prune: %w", err)
		}
	}
	return &pruneSummary{
		MessageType: "summary", DryRun: opts.DryRun, Snapshots: len(snaps),
		PruneStats: plan.Stats, BytesFreed: plan.Stats.BytesFreed(),
		DurationSeconds: time.Since(start).Seconds(),
	}, nil
}

// damaged adds to an error that stops a prune before it changes anything
// what the user should do about it.
func damaged(ctx context.Context, err error) error {
	if ctx.Err() != nil || errors.Is(err, context.Canceled) {
		return err
	}
	return fmt.Errorf("%w; nothing was removed: run \"cairn check\" (and \"cairn repair\" if it finds damage) before pruning", err)
}

func printPruneSummary(out *output, s *pruneSummary) error {
	if out.json {
		return out.JSON(s)
	}
	deleted, repacked := "deleted", "repacked"
	if s.DryRun {
		deleted, repacked = "would delete", "would repack"
	}
	st := s.PruneStats
	out.Printf("%d snapshots use %d blobs (%s); %d blobs (%s) are unused", s.Snapshots,
		st.UsedBlobs, formatBytes(st.UsedBytes), st.UnusedBlobs, formatBytes(st.UnusedBytes))
	if st.DuplicateBlobs > 0 {
		out.Printf(", %d of them extra copies", st.DuplicateBlobs)
	}
	out.Printf("\n")
	if st.PacksDeleted == 0 && st.PacksRepacked == 0 && st.IndexRemoved == 0 {
		out.Printf("nothing to prune: %d packs, %s\n", st.Packs, formatBytes(st.SizeBefore))
		return nil
	}
	out.Printf("%s %d of %d packs", deleted, st.PacksDeleted, st.Packs)
	if st.OrphanPacks > 0 {
		out.Printf(" (%d named by no index)", st.OrphanPacks)
	}
	if st.PacksRepacked > 0 {
		out.Printf(", %s %d (%d blobs in use, %s) into %d new", repacked, st.PacksRepacked,
			st.BlobsRepacked, formatBytes(st.BytesRepacked), st.PacksWritten)
	}
	out.Printf("\n")
	if s.DryRun {
		out.Printf("would free about %s: packs would take %s instead of %s\n",
			formatBytes(s.BytesFreed), formatBytes(st.SizeAfter), formatBytes(st.SizeBefore))
		out.Printf("nothing was changed (--dry-run)\n")
		return nil
	}
	out.Printf("freed %s: packs take %s instead of %s; %d index files replaced by %d\n",
		formatBytes(s.BytesFreed), formatBytes(st.SizeAfter), formatBytes(st.SizeBefore), st.IndexRemoved, st.IndexWritten)
	return nil
}

// pruneProgress returns a progress callback for Prune, drawing a live line
// on a terminal or status lines with --json, and a function that ends it.
func (o *output) pruneProgress() (func(pack.PruneProgress), func()) {
	r := o.reporter("")
	start := time.Now()
	names := map[string]string{"repack": "repacking packs", "delete": "deleting files"}
	fn := func(p pack.PruneProgress) {
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.finished {
			return
		}
		now := time.Now()
		switch {
		case o.json:
			if now.Sub(r.last) < 500*time.Millisecond && p.Done < p.Total {
				return
			}
			r.last = now
			pct := 0.0
			if p.Total > 0 {
				pct = float64(p.Done) / float64(p.Total)
			}
			_ = o.JSON(struct {
				MessageType    string  `json:"message_type"`
				Phase          string  `json:"phase"`
				SecondsElapsed float64 `json:"seconds_elapsed"`
				PercentDone    float64 `json:"percent_done"`
				Done           int     `json:"done"`
				Total          int     `json:"total"`
			}{"status", p.Phase, now.Sub(start).Seconds(), pct, p.Done, p.Total})
		case r.live():
			r.draw(fmt.Sprintf("[%s] %s: %d/%d", formatDuration(now.Sub(start)), names[p.Phase], p.Done, p.Total))
		}
	}
	return fn, r.Done
}

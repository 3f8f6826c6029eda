package main

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/cairn-backup/cairn/index"
	"github.com/cairn-backup/cairn/pack"
	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/snapshot"
	"github.com/urfave/cli/v2"
)

func newRepairCommand() *cli.Command {
	return &cli.Command{
		Name:      "repair",
		Usage:     "rebuild the index, or rewrite snapshots that reference lost data",
		ArgsUsage: "index|snapshots",
		Subcommands: []*cli.Command{
			{
				Name:  "index",
				Usage: "rebuild the index from the packs' headers",
				Flags: []cli.Flag{
					&cli.BoolFlag{Name: "read-data", Usage: "download every pack: the intact blobs of a damaged pack are copied to new packs and the pack is removed"},
				},
				Action: runRepairIndex,
			},
			{
				Name: "snapshots",
				Usage: "rewrite snapshots without what is lost: files with a missing data blob are dropped, " +
					"directories whose listing is missing are kept empty (run \"cairn repair index\" first)",
				Flags: []cli.Flag{
					&cli.BoolFlag{Name: "dry-run", Aliases: []string{"n"}, Usage: "only say what would be dropped"},
				},
				Action: runRepairSnapshots,
			},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() == 0 {
				return usageError(c, "missing subcommand: index or snapshots")
			}
			return usageError(c, "unknown subcommand %q: want index or snapshots", c.Args().First())
		},
	}
}

type repairIndexSummary struct {
	MessageType    string   `json:"message_type"`
	Packs          int      `json:"packs"`
	Blobs          int      `json:"blobs"`
	PacksAdded     int      `json:"packs_added"`
	PacksDropped   int      `json:"packs_dropped"`
	PacksLeftOut   []string `json:"packs_left_out"`
	PacksRemoved   []string `json:"packs_removed"`
	NewPacks       int      `json:"new_packs"`
	BlobsLost      int      `json:"blobs_lost"`
	IndexesRemoved int      `json:"index_files_removed"`
	IndexesWritten int      `json:"index_files_written"`
}

func idStrings(ids []repo.ID) []string {
	s := make([]string, 0, len(ids))
	for _, id := range ids {
		s = append(s, id.String())
	}
	return s
}

func runRepairIndex(c *cli.Context) error {
	if err := needArgs(c, 0, 0); err != nil {
		return err
	}
	out := newOutput(c)
	var mu sync.Mutex // reports and progress come from several goroutines
	line := liveLine{o: out}
	start := time.Now()
	var last time.Time
	opts := pack.RebuildOptions{
		ReadData:    c.Bool("read-data"),
		Connections: connections(c),
		Report: func(msg string) {
			mu.Lock()
			defer mu.Unlock()
			line.clear()
			if out.json {
				_ = out.JSON(map[string]string{"message_type": "report", "message": msg})
				return
			}
			fmt.Fprintf(os.Stderr, "cairn: %s\n", msg)
		},
		Progress: func(done, total int) {
			mu.Lock()
			defer mu.Unlock()
			if now := time.Now(); now.Sub(last) >= 200*time.Millisecond || done == total {
				last = now
				line.draw(fmt.Sprintf("[%s] %d / %d packs read", formatDuration(now.Sub(start)), done, total))
			}
		},
	}
	return withRepo(c, func(ctx context.Context, r *repo.Repo) error {
		var res pack.RebuildResult
		err := r.WithLock(ctx, true, func(ctx context.Context) error {
			var err error
			res, err = pack.RebuildIndex(ctx, r, opts)
			return err
		})
		mu.Lock()
		line.clear()
		mu.Unlock()
		if err != nil {
			return fmt.Errorf("repair index: %w", err)
		}
		if out.json {
			return out.JSON(repairIndexSummary{
				MessageType: "summary", Packs: res.Packs, Blobs: res.Blobs,
				PacksAdded: res.Added, PacksDropped: res.Dropped,
				PacksLeftOut: idStrings(res.LeftOut), PacksRemoved: idStrings(res.Removed),
				NewPacks: res.NewPacks, BlobsLost: res.BlobsLost,
				IndexesRemoved: res.OldIndexes, IndexesWritten: res.NewIndexes,
			})
		}
		out.Printf("new index: %s holding %s, in %s; %s removed\n", nounCount(res.Packs, "pack"), nounCount(res.Blobs, "blob"),
			nounCount(res.NewIndexes, "file"), nounCount(res.OldIndexes, "old index file"))
		switch {
		case res.Added == 1:
			out.Printf("1 pack was in no index before\n")
		case res.Added > 1:
			out.Printf("%d packs were in no index before\n", res.Added)
		}
		if len(res.Removed) > 0 {
			out.Printf("%s removed, %s written with the intact blobs\n",
				nounCount(len(res.Removed), "damaged pack"), nounCount(res.NewPacks, "new pack"))
		}
		if n := res.Dropped + len(res.LeftOut); n > 0 {
			out.Printf("%s of the old index gone or unreadable\n", nounCount(n, "pack"))
		}
		if res.BlobsLost > 0 {
			out.Printf("%s of damaged packs lost\n", nounCount(res.BlobsLost, "blob"))
		}
		if res.Dropped+len(res.LeftOut)+res.BlobsLost > 0 {
			out.Printf("run \"cairn repair snapshots\" to rewrite the snapshots that need what is gone\n")
		}
		return nil
	})
}

type repairedJSON struct {
	Old    string     `json:"old"`
	New    *string    `json:"new"`
	Losses []lossJSON `json:"losses"`
}

type lossJSON struct {
	Path   string `json:"path"`
	Kind   string `json:"kind"` // "dropped file", "emptied directory", "would …" in a dry run
	Reason string `json:"reason"`
}

func lossKind(l snapshot.RepairLoss, dry bool) string {
	switch {
	case dry && l.Dir:
		return "would empty directory"
	case dry:
		return "would drop file"
	case l.Dir:
		return "emptied directory"
	}
	return "dropped file"
}

func runRepairSnapshots(c *cli.Context) error {
	if err := needArgs(c, 0, 0); err != nil {
		return err
	}
	out := newOutput(c)
	dry := c.Bool("dry-run")
	return withRepo(c, func(ctx context.Context, r *repo.Repo) error {
		return r.WithLock(ctx, true, func(ctx context.Context) error {
			idx, err := index.Load(ctx, r, index.Options{CacheDir: cacheDir(c)})
			if err != nil {
				return fmt.Errorf("load index: %w", err)
			}
			defer idx.Close()
			store := pack.NewStore(r, idx)
			store.SetConnections(connections(c))
			res, err := snapshot.RepairSnapshots(ctx, store, snapshot.RepairOptions{
				DryRun: dry,
				Report: func(l snapshot.RepairLoss) {
					if l.Path == "/" {
						out.Printf("snapshot %s: everything is lost: %s\n", l.Snapshot.Short(), l.Reason)
						return
					}
					out.Printf("snapshot %s: %s %s: %s\n", l.Snapshot.Short(), lossKind(l, dry), l.Path, l.Reason)
				},
			})
			for _, e := range res.Unreadable {
				fmt.Fprintf(os.Stderr, "cairn: warning: %s\n", oneLine(e))
			}
			if err != nil {
				return fmt.Errorf("repair snapshots: %w", err)
			}
			if out.json {
				list := make([]repairedJSON, 0, len(res.Repaired))
				for _, rs := range res.Repaired {
					j := repairedJSON{Old: rs.Old.String(), Losses: []lossJSON{}}
					if !rs.New.IsNull() {
						j.New = nullable(rs.New.String())
					}
					for _, l := range rs.Losses {
						j.Losses = append(j.Losses, lossJSON{Path: l.Path, Kind: lossKind(l, dry), Reason: l.Reason})
					}
					list = append(list, j)
				}
				return out.JSON(map[string]any{"message_type": "summary", "dry_run": dry,
					"snapshots": res.Snapshots, "repaired": list})
			}
			for _, rs := range res.Repaired {
				if !dry {
					out.Printf("snapshot %s replaced by %s (tagged %q), %s lost\n", rs.Old.Short(), rs.New.Short(), snapshot.RepairTag, nounCount(len(rs.Losses), "entry"))
				}
			}
			switch {
			case len(res.Repaired) == 0:
				out.Printf("%s checked: none references lost data\n", nounCount(res.Snapshots, "snapshot"))
			case dry:
				out.Printf("%d of %d snapshots would be rewritten; run without --dry-run to do it\n", len(res.Repaired), res.Snapshots)
			default:
				out.Printf("%d of %d snapshots rewritten\n", len(res.Repaired), res.Snapshots)
			}
			return nil
		})
	})
}

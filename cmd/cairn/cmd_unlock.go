package main

import (
	"context"
	"fmt"

	"github.com/cairn-backup/cairn/repo"
	"github.com/urfave/cli/v2"
)

func newUnlockCommand() *cli.Command {
	return &cli.Command{
		Name:  "unlock",
		Usage: "remove stale locks (of a process that is gone on this host, or not refreshed for 30 minutes)",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "remove-all", Usage: "remove every lock, also those of running processes"},
		},
		Action: runUnlock,
	}
}

func runUnlock(c *cli.Context) error {
	if err := needArgs(c, 0, 0); err != nil {
		return err
	}
	out := newOutput(c)
	all := c.Bool("remove-all")
	return withRepo(c, func(ctx context.Context, r *repo.Repo) error {
		n, err := r.RemoveLocks(ctx, all)
		if err != nil {
			return fmt.Errorf("remove locks: %w", err)
		}
		if out.json {
			return out.JSON(map[string]any{"message_type": "unlocked", "removed": n, "remove_all": all})
		}
		kind := "stale "
		if all {
			kind = ""
		}
		word := "locks"
		if n == 1 {
			word = "lock"
		}
		out.Printf("removed %d %s%s\n", n, kind, word)
		return nil
	})
}

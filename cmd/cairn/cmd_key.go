package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/cairn-backup/cairn/crypto"
	"github.com/cairn-backup/cairn/repo"
	"github.com/urfave/cli/v2"
)

func newKeyCommand() *cli.Command {
	newPassword := &cli.StringFlag{Name: "new-password-file", Usage: "read the new password from `FILE`"}
	return &cli.Command{
		Name:      "key",
		Usage:     "manage the repository's keys (one per password)",
		ArgsUsage: "list|add|remove ID|passwd",
		Subcommands: []*cli.Command{
			{Name: "list", Usage: "list keys; * marks the one in use", Action: runKeyList},
			{Name: "add", Usage: "add a key for a new password", Flags: []cli.Flag{newPassword}, Action: runKeyAdd},
			{Name: "remove", Usage: "remove a key", ArgsUsage: "ID", Action: runKeyRemove},
			{Name: "passwd", Usage: "change the password: add a new key, remove the one in use",
				Flags: []cli.Flag{newPassword}, Action: runKeyPasswd},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() == 0 {
				return usageError(c, "missing subcommand: list, add, remove or passwd")
			}
			return usageError(c, "unknown subcommand %q: want list, add, remove or passwd", c.Args().First())
		},
	}
}

type keyJSON struct {
	Current  bool      `json:"current"`
	ID       string    `json:"id"`
	ShortID  string    `json:"short_id"`
	Username string    `json:"username"`
	Hostname string    `json:"hostname"`
	Created  time.Time `json:"created"`
}

func runKeyList(c *cli.Context) error {
	if err := needArgs(c, 0, 0); err != nil {
		return err
	}
	out := newOutput(c)
	return withRepo(c, func(ctx context.Context, r *repo.Repo) error {
		var ids []repo.ID
		if err := r.ListIDs(ctx, repo.KeyFile, func(id repo.ID, _ int64) error {
			ids = append(ids, id)
			return nil
		}); err != nil {
			return err
		}
		keys := make([]keyJSON, 0, len(ids))
		for _, id := range ids {
			kf, err := r.LoadKeyFile(ctx, id)
			if err != nil {
				return err
			}
			keys = append(keys, keyJSON{Current: id == r.KeyID(), ID: id.String(), ShortID: id.Short(),
				Username: kf.Username, Hostname: kf.Hostname, Created: kf.Created})
		}
		slices.SortFunc(keys, func(a, b keyJSON) int { return a.Created.Compare(b.Created) })
		if out.json {
			return out.JSON(keys)
		}
		if out.quiet {
			return nil
		}
		tw := tabwriter.NewWriter(out.stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, " \tID\tUser\tHost\tCreated")
		for _, k := range keys {
			mark := " "
			if k.Current {
				mark = "*"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", mark, k.ShortID, k.Username, k.Hostname, localTime(k.Created))
		}
		return tw.Flush()
	})
}

// newPassword reads the password for a new key: --new-password-file, else
// a prompt, twice.
func newPassword(c *cli.Context) ([]byte, error) {
	if f := c.String("new-password-file"); f != "" {
		return passwordFromFile(f)
	}
	pw, err := promptPassword("enter new password: ", true)
	if errors.Is(err, errNoPassword) {
		return nil, fmt.Errorf("no new password given: use --new-password-file or run on a terminal")
	}
	return pw, err
}

func runKeyAdd(c *cli.Context) error {
	if err := needArgs(c, 0, 0); err != nil {
		return err
	}
	out := newOutput(c)
	return withRepo(c, func(ctx context.Context, r *repo.Repo) error {
		pw, err := newPassword(c)
		if err != nil {
			return err
		}
		id, err := r.AddKey(ctx, pw, crypto.KDFParams{})
		if err != nil {
			return err
		}
		if out.json {
			return out.JSON(map[string]string{"message_type": "key_added", "id": id.String()})
		}
		out.Printf("saved new key %s\n", id.Short())
		return nil
	})
}

func runKeyRemove(c *cli.Context) error {
	if err := needArgs(c, 1, 1); err != nil {
		return err
	}
	out := newOutput(c)
	return withRepo(c, func(ctx context.Context, r *repo.Repo) error {
		id, err := findID(ctx, r, repo.KeyFile, c.Args().First())
		if err != nil {
			return err
		}
		if id == r.KeyID() {
			return fmt.Errorf("refusing to remove key %s: it is the one in use (use \"cairn key passwd\", or open with another password)", id.Short())
		}
		if err := r.RemoveKey(ctx, id); err != nil {
			return err
		}
		if out.json {
			return out.JSON(map[string]string{"message_type": "key_removed", "id": id.String()})
		}
		out.Printf("removed key %s\n", id.Short())
		return nil
	})
}

func runKeyPasswd(c *cli.Context) error {
	if err := needArgs(c, 0, 0); err != nil {
		return err
	}
	out := newOutput(c)
	return withRepo(c, func(ctx context.Context, r *repo.Repo) error {
		pw, err := newPassword(c)
		if err != nil {
			return err
		}
		old := r.KeyID()
		id, err := r.AddKey(ctx, pw, crypto.KDFParams{})
		if err != nil {
			return err
		}
		if err := r.RemoveKey(ctx, old); err != nil {
			return fmt.Errorf("new key %s saved, but the old key %s could not be removed: %w", id.Short(), old.Short(), err)
		}
		if out.json {
			return out.JSON(map[string]string{"message_type": "password_changed", "id": id.String(), "removed": old.String()})
		}
		out.Printf("saved new key %s, removed key %s\n", id.Short(), old.Short())
		return nil
	})
}

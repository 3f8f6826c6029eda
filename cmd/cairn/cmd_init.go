package main

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/cairn-backup/cairn/repo"
	"github.com/restic/chunker"
	"github.com/urfave/cli/v2"
)

func newInitCommand() *cli.Command {
	return &cli.Command{
		Name:  "init",
		Usage: "create a repository",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "chunker-polynomial", Usage: "chunker polynomial as `HEX` (default: random)"},
			&cli.StringFlag{Name: "compression", Value: "auto", Usage: "`MODE`: auto, off or max"},
		},
		Action: runInit,
	}
}

// parsePolynomial reads a --chunker-polynomial value, with or without 0x.
func parsePolynomial(s string) (chunker.Pol, error) {
	if s == "" {
		return 0, nil
	}
	h := strings.TrimPrefix(strings.TrimPrefix(s, "0x"), "0X")
	v, err := strconv.ParseUint(h, 16, 64)
	if err != nil || v == 0 {
		return 0, fmt.Errorf("invalid --chunker-polynomial %q: want a hex number", s)
	}
	pol := chunker.Pol(v)
	if !pol.Irreducible() {
		return 0, fmt.Errorf("invalid --chunker-polynomial %q: not irreducible", s)
	}
	return pol, nil
}

func runInit(c *cli.Context) error {
	if err := needArgs(c, 0, 0); err != nil {
		return err
	}
	out := newOutput(c)
	comp, err := repo.ParseCompression(c.String("compression"))
	if err != nil {
		return err
	}
	pol, err := parsePolynomial(c.String("chunker-polynomial"))
	if err != nil {
		return err
	}
	be, err := openBackend(c)
	if err != nil {
		return err
	}
	pw, err := readPassword(c.Context, c, "enter password for new repository: ", true)
	if err != nil {
		return err
	}
	if err := be.create(c.Context); err != nil {
		return fmt.Errorf("create repository %s: %w", c.String("repo"), err)
	}
	r, err := repo.Init(c.Context, be, pw, repo.InitOptions{Compression: comp, Polynomial: pol})
	if errors.Is(err, repo.ErrRepositoryExists) {
		return fmt.Errorf("repository %s already exists", c.String("repo"))
	}
	if err != nil {
		return fmt.Errorf("create repository %s: %w", c.String("repo"), err)
	}
	defer r.Close()
	id := r.Config().ID
	if out.json {
		return out.JSON(map[string]string{"message_type": "initialized", "id": id.String(), "repository": r.Location()})
	}
	out.Printf("created cairn repository %s at %s\n\n", id.Short(), r.Location())
	out.Printf("Please note that knowledge of your password is required to access\n" +
		"the repository. Losing your password means that your data is\n" +
		"irrecoverably lost.\n")
	return nil
}

package main

import (
	"flag"
	"testing"

	"github.com/cairn-backup/cairn/repo"
	"github.com/urfave/cli/v2"
)

// The wrappers around a local backend (retries, traffic counting) must let
// the pack store reach its directory: packs are then filled there and linked
// into place. Without it every pack is written twice.
func TestLocalBackendOffersItsDirectory(t *testing.T) {
	dir := t.TempDir()
	set := flag.NewFlagSet("cairn", flag.ContinueOnError)
	set.String("repo", dir, "")
	set.Bool("verbose", false, "")
	be, err := openBackend(cli.NewContext(cli.NewApp(), set, nil))
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	if got := repo.TempDirOf(be); got != dir {
		t.Fatalf("packs for a repository in %s would be filled in %q", dir, got)
	}
}

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/cairn-backup/cairn/index"
	"github.com/cairn-backup/cairn/pack"
	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/snapshot"
	"github.com/urfave/cli/v2"
)

func newCatCommand() *cli.Command {
	return &cli.Command{
		Name:      "cat",
		Usage:     "print a repository object as JSON (for debugging)",
		ArgsUsage: "config | snapshot ID | index ID | pack ID | key ID",
		Action:    runCat,
	}
}

type blobJSON struct {
	Type               string  `json:"type"`
	ID                 repo.ID `json:"id"`
	Offset             uint32  `json:"offset"`
	Length             uint32  `json:"length"`
	UncompressedLength uint32  `json:"uncompressed_length"`
}

type packJSON struct {
	ID    repo.ID    `json:"id"`
	Blobs []blobJSON `json:"blobs"`
}

func blobsJSON(list []repo.PackedBlob) []blobJSON {
	out := make([]blobJSON, 0, len(list))
	for _, b := range list {
		out = append(out, blobJSON{Type: b.Type.String(), ID: b.ID, Offset: b.Offset, Length: b.Length, UncompressedLength: b.RawLength})
	}
	return out
}

func runCat(c *cli.Context) error {
	if c.NArg() == 0 {
		return usageError(c, "missing argument: config, snapshot, index, pack or key")
	}
	kind := c.Args().First()
	want := 1
	if kind != "config" {
		want = 2
	}
	switch kind {
	case "config", "snapshot", "index", "pack", "key":
	default:
		return usageError(c, "unknown object type %q: want config, snapshot, index, pack or key", kind)
	}
	if c.NArg() != want {
		if want == 1 {
			return usageError(c, "cat config takes no id")
		}
		return usageError(c, "cat %s needs an id", kind)
	}
	ref := c.Args().Get(1)
	out := newOutput(c)
	return withRepo(c, func(ctx context.Context, r *repo.Repo) error {
		switch kind {
		case "config":
			return out.JSONIndent(r.Config())
		case "snapshot":
			sn, err := findSnapshot(ctx, r, ref, snapshot.Filter{})
			if err != nil {
				return err
			}
			b, err := r.LoadFile(ctx, repo.SnapshotFile, sn.ID)
			if err != nil {
				return err
			}
			return printRawJSON(out, b)
		case "index":
			id, err := findID(ctx, r, repo.IndexFile, ref)
			if err != nil {
				return err
			}
			f, err := index.LoadFile(ctx, r, id)
			if err != nil {
				return err
			}
			packs := make([]packJSON, 0, len(f.Packs))
			for _, p := range f.Packs {
				packs = append(packs, packJSON{ID: p.Pack, Blobs: blobsJSON(p.Blobs)})
			}
			supersedes := f.Supersedes
			if supersedes == nil {
				supersedes = []repo.ID{}
			}
			return out.JSONIndent(struct {
				ID         repo.ID    `json:"id"`
				Supersedes []repo.ID  `json:"supersedes"`
				Packs      []packJSON `json:"packs"`
			}{id, supersedes, packs})
		case "pack":
			id, err := findID(ctx, r, repo.PackFile, ref)
			if err != nil {
				return err
			}
			blobs, err := pack.ReadHeader(ctx, r.Backend(), r.Key(), id)
			if err != nil {
				return err
			}
			return out.JSONIndent(packJSON{ID: id, Blobs: blobsJSON(blobs)})
		default: // key
			id, err := findID(ctx, r, repo.KeyFile, ref)
			if err != nil {
				return err
			}
			// A key file is plain JSON: the master key inside stays sealed.
			b, err := repo.ReadAll(ctx, r.Backend(), repo.Handle{Type: repo.KeyFile, Name: id.String()})
			if err != nil {
				return fmt.Errorf("load key %s: %w", id.Short(), err)
			}
			return printRawJSON(out, b)
		}
	})
}

// findID resolves an id prefix among files of type t.
func findID(ctx context.Context, r *repo.Repo, t repo.FileType, ref string) (repo.ID, error) {
	what := strings.TrimSuffix(string(t), "s")
	if t == repo.PackFile {
		what = "pack"
	}
	if strings.Trim(strings.ToLower(ref), "0123456789abcdef") != "" {
		return repo.ID{}, fmt.Errorf("invalid %s id %q: want hex digits", what, ref)
	}
	id, err := r.FindID(ctx, t, ref)
	if errors.Is(err, repo.ErrNotFound) {
		return id, fmt.Errorf("no %s with id %s", what, ref)
	}
	return id, err
}

func printRawJSON(out *output, b []byte) error {
	var buf bytes.Buffer
	if err := json.Indent(&buf, b, "", "  "); err != nil {
		return fmt.Errorf("decode json: %w", err)
	}
	buf.WriteByte('\n')
	_, err := out.stdout.Write(buf.Bytes())
	return err
}

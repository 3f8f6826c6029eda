// Command mkindex fills a repository's index with synthetic blobs, for
// scripts/bench-index.sh:
//
//	CAIRN_PASSWORD=... mkindex -repo DIR -blobs N [-per-file 50000] [-per-pack 32] [-seed 1]
//
// DIR is a local repository made by "cairn init". N blobs, PER-PACK to a
// pack of about 16 MiB (every 64th pack a tree pack, the rest data), are
// written as real, encrypted index files of PER-FILE blobs each, the way
// prune and repair write them. Blob and pack IDs are hashes of a counter, as
// spread as real ones. The packs themselves are not written: a backup of new
// data only asks the index whether its blobs exist.
package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/cairn-backup/cairn/crypto"
	"github.com/cairn-backup/cairn/index"
	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/repo/local"
)

func main() {
	dir := flag.String("repo", "", "local repository `DIR`")
	blobs := flag.Int("blobs", 10_000_000, "blobs in the index")
	perFile := flag.Int("per-file", index.FlushEvery, "blobs per index file")
	perPack := flag.Int("per-pack", 32, "blobs per pack")
	seed := flag.Uint64("seed", 1, "seed of the IDs; another seed gives other blobs")
	flag.Parse()
	if err := run(*dir, *blobs, *perFile, *perPack, *seed); err != nil {
		fmt.Fprintln(os.Stderr, "mkindex:", err)
		os.Exit(1)
	}
}

func run(dir string, blobs, perFile, perPack int, seed uint64) error {
	switch {
	case dir == "":
		return errors.New("no -repo given")
	case blobs < 0 || perFile <= 0 || perPack <= 0:
		return errors.New("-blobs, -per-file and -per-pack want positive counts")
	}
	pw := os.Getenv("CAIRN_PASSWORD")
	if pw == "" {
		return errors.New("CAIRN_PASSWORD is not set")
	}
	ctx := context.Background()
	be, err := local.Open(dir)
	if err != nil {
		return fmt.Errorf("open %s: %w", dir, err)
	}
	r, err := repo.Open(ctx, be, []byte(pw))
	if err != nil {
		return fmt.Errorf("open repository %s: %w", dir, err)
	}
	defer r.Close()

	start := time.Now()
	files := 0
	var f index.File
	n := 0 // blobs in f
	save := func() error {
		if _, err := r.SaveFile(ctx, repo.IndexFile, f.Encode()); err != nil {
			return fmt.Errorf("save index file %d: %w", files+1, err)
		}
		files++
		f, n = index.File{}, 0
		return nil
	}
	for next, pack := 0, uint64(0); next < blobs; pack++ {
		t := repo.DataBlob
		if pack%64 == 63 {
			t = repo.TreeBlob
		}
		p := index.PackEntries{Pack: makeID(seed, 1, pack)}
		var off uint32
		for j := 0; j < perPack && next < blobs; j++ {
			id := makeID(seed, 0, uint64(next))
			// 384 to 640 KiB, around the chunker's 512 KiB average.
			size := uint32(384<<10) + binary.LittleEndian.Uint32(id[:4])%(256<<10)
			p.Blobs = append(p.Blobs, repo.PackedBlob{Type: t, ID: id, Offset: off, Length: size + crypto.Overhead, RawLength: size})
			off += size + crypto.Overhead
			next++
		}
		f.Packs = append(f.Packs, p)
		n += len(p.Blobs)
		if n >= perFile {
			if err := save(); err != nil {
				return err
			}
		}
	}
	if n > 0 {
		if err := save(); err != nil {
			return err
		}
	}
	fmt.Fprintf(os.Stderr, "mkindex: %d blobs in %d index files in %.1f s\n", blobs, files, time.Since(start).Seconds())
	return nil
}

// makeID hashes (seed, kind, i): kind 0 names blobs, 1 packs.
func makeID(seed uint64, kind byte, i uint64) repo.ID {
	var in [17]byte
	binary.LittleEndian.PutUint64(in[:8], seed)
	in[8] = kind
	binary.LittleEndian.PutUint64(in[9:], i)
	return repo.ID(crypto.Hash(in[:]))
}

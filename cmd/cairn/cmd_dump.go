package main

import (
	"archive/tar"
	"archive/zip"
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"

	"github.com/cairn-backup/cairn/pack"
	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/snapshot"
	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"
)

func newDumpCommand() *cli.Command {
	return &cli.Command{
		Name:      "dump",
		Usage:     "write a file to stdout, or a directory as an archive",
		ArgsUsage: "ID|latest PATH",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "archive", Value: "tar", Usage: "archive `FORMAT` for directories: tar or zip"},
		}, filterFlags()...),
		Action: runDump,
	}
}

func runDump(c *cli.Context) error {
	if err := needArgs(c, 2, 2); err != nil {
		return err
	}
	archive := c.String("archive")
	switch archive {
	case "tar", "zip":
	default:
		return usageError(c, "invalid --archive %q: want tar or zip", c.String("archive"))
	}
	f, err := readFilter(c)
	if err != nil {
		return err
	}
	out := newOutput(c)
	return withStore(c, true, func(ctx context.Context, r *repo.Repo, store *pack.Store) error {
		sn, err := findSnapshot(ctx, r, c.Args().Get(0), f)
		if err != nil {
			return err
		}
		p := "/" + strings.Trim(c.Args().Get(1), "/")
		n, err := snapshot.FindNode(ctx, store, sn, p)
		if errors.Is(err, repo.ErrNotFound) {
			return fmt.Errorf("path %s not found in snapshot %s", p, sn.ID.Short())
		}
		if err != nil {
			return err
		}
		w := bufio.NewWriterSize(out.stdout, 1<<20)
		switch n.Type {
		case snapshot.TypeFile:
			if err := snapshot.WriteContent(ctx, store, n, w); err != nil {
				return fmt.Errorf("dump %s: %w", p, err)
			}
		case snapshot.TypeDir:
			write := writeTar
			if archive == "zip" {
				write = writeZip
			}
			if err := write(ctx, store, sn, p, w); err != nil {
				return fmt.Errorf("dump %s: %w", p, err)
			}
		default:
			return fmt.Errorf("%s is a %s: only files and directories can be dumped", p, n.Type)
		}
		return w.Flush()
	})
}

// writeTar writes the directory at p and everything below it as a PAX
// tar stream. Names are relative to the snapshot's root ("data/x"), as
// restic writes them. Hard links become regular files; sockets, which tar
// cannot hold, are left out.
func writeTar(ctx context.Context, store *pack.Store, sn *snapshot.Snapshot, p string, w io.Writer) error {
	tw := tar.NewWriter(w)
	err := walkFrom(ctx, store, sn, p, func(path string, n *snapshot.Node) error {
		hdr, ok := tarHeader(strings.TrimPrefix(path, "/"), n)
		if !ok {
			return nil
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if n.Type == snapshot.TypeFile {
			if err := snapshot.WriteContent(ctx, store, n, tw); err != nil {
				return fmt.Errorf("%s: %w", path, err)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

// writeZip writes the directory at p and everything below it as a zip
// stream, with the names writeTar uses. Zip holds files, directories and
// symlinks; other entries are left out.
func writeZip(ctx context.Context, store *pack.Store, sn *snapshot.Snapshot, p string, w io.Writer) error {
	zw := zip.NewWriter(w)
	err := walkFrom(ctx, store, sn, p, func(path string, n *snapshot.Node) error {
		hdr := &zip.FileHeader{Name: strings.TrimPrefix(path, "/"), Modified: n.ModTime, Method: zip.Store}
		perm := fs.FileMode(n.Mode & 0o777)
		switch n.Type {
		case snapshot.TypeFile:
			hdr.Method = zip.Deflate
			hdr.SetMode(perm)
		case snapshot.TypeDir:
			hdr.Name += "/"
			hdr.SetMode(fs.ModeDir | perm)
		case snapshot.TypeSymlink:
			hdr.SetMode(fs.ModeSymlink | perm)
		default:
			return nil
		}
		fw, err := zw.CreateHeader(hdr)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		switch n.Type {
		case snapshot.TypeFile:
			err = snapshot.WriteContent(ctx, store, n, fw)
		case snapshot.TypeSymlink:
			_, err = fw.Write(n.Link) // a zip symlink's content is its target
		}
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return zw.Close()
}

// tarHeader describes a node for tar; ok is false for what tar cannot hold.
func tarHeader(name string, n *snapshot.Node) (*tar.Header, bool) {
	hdr := &tar.Header{
		Name: name, Mode: int64(n.Mode & 0o7777), Uid: int(n.UID), Gid: int(n.GID),
		Uname: n.User, Gname: n.Group, ModTime: n.ModTime,
		Format: tar.FormatPAX,
	}
	// PAX can carry access and change times; zero ones are left out.
	if !n.ATime.IsZero() {
		hdr.AccessTime = n.ATime
	}
	if !n.CTime.IsZero() {
		hdr.ChangeTime = n.CTime
	}
	switch n.Type {
	case snapshot.TypeFile:
		hdr.Typeflag, hdr.Size = tar.TypeReg, int64(n.Size)
	case snapshot.TypeDir:
		hdr.Typeflag, hdr.Name = tar.TypeDir, name+"/"
	case snapshot.TypeSymlink:
		hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, string(n.Link)
	case snapshot.TypeDev, snapshot.TypeCharDev:
		hdr.Typeflag = tar.TypeBlock
		if n.Type == snapshot.TypeCharDev {
			hdr.Typeflag = tar.TypeChar
		}
		hdr.Devmajor, hdr.Devminor = int64(unix.Major(n.Rdev)), int64(unix.Minor(n.Rdev))
	case snapshot.TypeFIFO:
		hdr.Typeflag = tar.TypeFifo
	default:
		return nil, false
	}
	return hdr, true
}

// Command gendata makes the benchmark datasets of scripts/bench.sh:
//
//	gendata tree -dst DIR -files N -mb S [-src DIR,DIR...]
//	    real files copied from -src until N files or S MiB, topped up with
//	    generated files (half random, half text-like) to reach S MiB;
//	gendata random -dst FILE -mb S -seed K
//	    incompressible pseudo-random bytes;
//	gendata shift -src FILE -dst FILE
//	    a copy with 1 byte inserted at the start and 10 in the middle;
//	gendata night2 -src DIR -dst DIR -percent P -seed K
//	    a second night: DIR hard-linked into DST, then P% of the files
//	    rewritten (new inodes, so SRC is untouched) and a few added.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
)

func main() {
	if len(os.Args) < 2 {
		fail(errors.New("usage: gendata tree|random|shift|night2 [flags]"))
	}
	fl := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	dst := fl.String("dst", "", "output")
	src := fl.String("src", "", "input")
	files := fl.Int("files", 20000, "files in the tree")
	mb := fl.Int64("mb", 1024, "size in MiB")
	seed := fl.Uint64("seed", 1, "random seed")
	percent := fl.Float64("percent", 3, "share of files changed on night 2")
	_ = fl.Parse(os.Args[2:])
	var err error
	switch os.Args[1] {
	case "tree":
		err = tree(*dst, strings.Split(*src, ","), *files, *mb<<20)
	case "random":
		err = randomFile(*dst, *mb<<20, *seed)
	case "shift":
		err = shift(*src, *dst)
	case "night2":
		err = night2(*src, *dst, *percent, *seed)
	default:
		err = fmt.Errorf("unknown dataset %q", os.Args[1])
	}
	if err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "gendata:", err)
	os.Exit(1)
}

// tree copies regular files from srcs (skipping big ones, so the tree is
// made of many files) until files or size is reached, then adds generated
// files to reach size.
func tree(dst string, srcs []string, files int, size int64) error {
	var n int
	var total int64
	stop := errors.New("enough")
	for _, root := range srcs {
		if root == "" {
			continue
		}
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil // unreadable parts of the machine are skipped
			}
			if n >= files*9/10 || total >= size*8/10 {
				return stop
			}
			if !d.Type().IsRegular() {
				return nil
			}
			info, err := d.Info()
			if err != nil || info.Size() > 8<<20 {
				return nil
			}
			rel, _ := filepath.Rel("/", p)
			if err := copyFile(p, filepath.Join(dst, "real", rel)); err != nil {
				return nil
			}
			n++
			total += info.Size()
			return nil
		})
		if err != nil && err != stop {
			return err
		}
	}
	// Top up with generated files of 64 KiB to 16 MiB.
	rng := rand.New(rand.NewPCG(7, uint64(size)))
	for i := 0; total < size || n < files; i++ {
		sz := min(int64(64<<10)<<rng.IntN(9), max(size-total, 4096))
		if n < files && total >= size {
			sz = 4096
		}
		p := filepath.Join(dst, "gen", fmt.Sprintf("d%03d", i%100), fmt.Sprintf("f%06d", i))
		if err := genFile(p, sz, i%2 == 0, rng.Uint64()); err != nil {
			return err
		}
		n++
		total += sz
	}
	fmt.Printf("tree %s: %d files, %.0f MiB\n", dst, n, float64(total)/(1<<20))
	return nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

var words = strings.Fields(`the quick brown fox jumps over lazy dog backup restore
cluster component snapshot etcd postgres bucket node config index pack tree blob
chunk error warning info debug request response status user time value key`)

// genFile writes size bytes: random, or text-like lines that compress about
// as well as logs and source code.
func genFile(p string, size int64, random bool, seed uint64) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	f, err := os.Create(p)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	rng := rand.New(rand.NewPCG(seed, 1))
	if random {
		_, err = io.CopyN(w, rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16)}), size)
	} else {
		var written int64
		for written < size && err == nil {
			line := fmt.Sprintf("%08d %s %s=%d %s\n", rng.IntN(1e8), words[rng.IntN(len(words))],
				words[rng.IntN(len(words))], rng.IntN(100000), words[rng.IntN(len(words))])
			if int64(len(line)) > size-written {
				line = line[:size-written]
			}
			var k int
			k, err = w.WriteString(line)
			written += int64(k)
		}
	}
	if err == nil {
		err = w.Flush()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func randomFile(dst string, size int64, seed uint64) error {
	return genFile(dst, size, true, seed)
}

// shift copies src to dst with 1 byte inserted at the start and 10 in the
// middle: content-defined chunking must find the old chunks again.
func shift(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	mid := len(data) / 2
	out := make([]byte, 0, len(data)+11)
	out = append(out, 'X')
	out = append(out, data[:mid]...)
	out = append(out, "0123456789"...)
	out = append(out, data[mid:]...)
	return os.WriteFile(dst, out, 0o644)
}

// night2 hard-links src into dst, then rewrites percent% of the files as
// new files (a changed block in place of the old content's middle, or an
// appended tail) and adds a few new ones.
func night2(src, dst string, percent float64, seed uint64) error {
	rng := rand.New(rand.NewPCG(seed, 2))
	var changed, added int
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		if rng.Float64()*100 >= percent {
			return os.Link(p, target)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if len(data) > 0 && rng.IntN(2) == 0 {
			off := rng.IntN(len(data))
			end := min(len(data), off+4096)
			for i := off; i < end; i++ {
				data[i] ^= byte(rng.Uint32())
			}
		} else {
			data = append(data, fmt.Sprintf("\nchanged on night 2: %d\n", rng.Uint64())...)
		}
		changed++
		return os.WriteFile(target, data, 0o644)
	})
	if err != nil {
		return err
	}
	for i := range 50 {
		p := filepath.Join(dst, "night2", fmt.Sprintf("new%03d", i))
		if err := genFile(p, 256<<10, i%2 == 0, rng.Uint64()); err != nil {
			return err
		}
		added++
	}
	fmt.Printf("night 2 %s: %d files changed, %d added\n", dst, changed, added)
	return nil
}

// Package repo is the repository: its config, key files, locks and the
// encrypted whole files (index files, snapshots) stored in a Backend.
// docs/format.md describes what it writes.
package repo

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/user"
	"runtime"
	"strings"

	"github.com/cairn-backup/cairn/crypto"
	"github.com/restic/chunker"
)

// FormatVersion is the repository format this code reads and writes.
const FormatVersion = 1

// Chunk sizes of a new repository: at least 512 KiB, then a cut where the
// fingerprint has 17 low zero bits, so about 640 KiB on average. The
// chunker skips the minimum and hashes only the rest, a fifth of the bytes
// rather than half with 2^19 (docs/format.md).
const (
	DefaultChunkMin     = 512 << 10
	DefaultChunkAvgBits = 17
	DefaultChunkMax     = 8 << 20
)

var (
	// ErrNoRepository means there is no config at the location.
	ErrNoRepository = errors.New("repository does not exist")
	// ErrRepositoryExists means init found a config already.
	ErrRepositoryExists = errors.New("repository already exists")
	// ErrWrongPassword means no key file opened with the password.
	ErrWrongPassword = crypto.ErrWrongPassword
)

// Config is the repository's decrypted config object.
type Config struct {
	Version      int         `json:"version"`
	ID           ID          `json:"id"`
	Polynomial   chunker.Pol `json:"chunker_polynomial"`
	ChunkMin     uint        `json:"chunk_min"`
	ChunkAvgBits int         `json:"chunk_avg_bits"`
	ChunkMax     uint        `json:"chunk_max"`
	PackSize     int         `json:"pack_size"`
	Compression  Compression `json:"compression"`
}

// Repo is an open repository. It is safe for concurrent use.
type Repo struct {
	be    Backend
	key   *crypto.Key
	keyID ID
	cfg   Config
	cache *FileCache // nil: none
}

// InitOptions are the choices fixed when a repository is created.
type InitOptions struct {
	Polynomial  chunker.Pol // zero: random
	Compression Compression // empty: auto
	KDF         crypto.KDFParams
}

// Init creates a repository in be, protected by password.
func Init(ctx context.Context, be Backend, password []byte, opts InitOptions) (*Repo, error) {
	if _, err := be.Stat(ctx, Handle{Type: ConfigFile}); err == nil {
		return nil, ErrRepositoryExists
	} else if !errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("stat config: %w", err)
	}
	// A key file without a config is an interrupted init: refuse rather than guess.
	found := false
	if err := be.List(ctx, KeyFile, func(FileInfo) error { found = true; return nil }); err != nil {
		return nil, fmt.Errorf("list keys: %w", err)
	}
	if found {
		return nil, fmt.Errorf("%w: key files without a config (an interrupted init?)", ErrRepositoryExists)
	}
	pol := opts.Polynomial
	if pol == 0 {
		var err error
		if pol, err = chunker.RandomPolynomial(); err != nil {
			return nil, fmt.Errorf("chunker polynomial: %w", err)
		}
	} else if !pol.Irreducible() {
		return nil, fmt.Errorf("chunker polynomial %s is not irreducible", pol)
	}
	if opts.Compression == "" {
		opts.Compression = CompressAuto
	}
	if opts.KDF.Time == 0 {
		opts.KDF = crypto.DefaultKDF
	}
	r := &Repo{be: be, key: crypto.NewRandomKey()}
	r.cfg = Config{
		Version: FormatVersion, Polynomial: pol,
		ChunkMin: DefaultChunkMin, ChunkAvgBits: DefaultChunkAvgBits, ChunkMax: DefaultChunkMax,
		PackSize: 16 << 20, Compression: opts.Compression,
	}
	if _, err := rand.Read(r.cfg.ID[:]); err != nil {
		return nil, fmt.Errorf("repository id: %w", err)
	}
	id, err := r.AddKey(ctx, password, opts.KDF)
	if err != nil {
		return nil, err
	}
	r.keyID = id
	cfg, err := json.Marshal(r.cfg)
	if err != nil {
		return nil, err
	}
	if err := r.saveSealed(ctx, Handle{Type: ConfigFile}, cfg); err != nil {
		return nil, fmt.Errorf("save config: %w", err)
	}
	return r, nil
}

// Open unlocks the repository in be with password.
func Open(ctx context.Context, be Backend, password []byte) (*Repo, error) {
	sealed, err := ReadAll(ctx, be, Handle{Type: ConfigFile})
	if errors.Is(err, ErrNotFound) {
		return nil, ErrNoRepository
	}
	if err != nil {
		return nil, fmt.Errorf("load config: %w", err)
	}
	r := &Repo{be: be}
	if err := r.unlock(ctx, password); err != nil {
		return nil, err
	}
	plain, err := r.open(sealed, ConfigFile)
	if err != nil {
		return nil, fmt.Errorf("decrypt config: %w", err)
	}
	if err := json.Unmarshal(plain, &r.cfg); err != nil {
		return nil, fmt.Errorf("decode config: %w", err)
	}
	if r.cfg.Version != FormatVersion {
		return nil, fmt.Errorf("repository format version %d is not supported (this cairn reads %d)", r.cfg.Version, FormatVersion)
	}
	return r, nil
}

// unlock tries password against every key file.
func (r *Repo) unlock(ctx context.Context, password []byte) error {
	var ids []ID
	err := r.be.List(ctx, KeyFile, func(fi FileInfo) error {
		id, err := ParseID(fi.Name)
		if err == nil {
			ids = append(ids, id)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("list keys: %w", err)
	}
	for _, id := range ids {
		kf, err := r.LoadKeyFile(ctx, id)
		if err != nil {
			return err
		}
		k, err := kf.Open(password)
		// Each try held the KDF's memory: collect it now, while the live heap
		// is tiny, or the collector would size the next cycles after it.
		runtime.GC()
		if err == nil {
			r.key, r.keyID = k, id
			return nil
		}
	}
	return ErrWrongPassword
}

// LoadKeyFile reads and parses keys/<id>.
func (r *Repo) LoadKeyFile(ctx context.Context, id ID) (*crypto.KeyFile, error) {
	data, err := ReadAll(ctx, r.be, Handle{Type: KeyFile, Name: id.String()})
	if err != nil {
		return nil, fmt.Errorf("load key %s: %w", id.Short(), err)
	}
	if ID(crypto.Hash(data)) != id {
		return nil, fmt.Errorf("key %s: content does not match its name", id.Short())
	}
	kf, err := crypto.ParseKeyFile(data)
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", id.Short(), err)
	}
	return kf, nil
}

// AddKey stores a new key file for password and returns its id.
func (r *Repo) AddKey(ctx context.Context, password []byte, p crypto.KDFParams) (ID, error) {
	if p.Time == 0 {
		p = crypto.DefaultKDF
	}
	username, hostname := Whoami()
	data := crypto.NewKeyFile(r.key, password, p, username, hostname).Marshal()
	id := ID(crypto.Hash(data))
	if err := r.be.Save(ctx, Handle{Type: KeyFile, Name: id.String()}, bytes.NewReader(data), int64(len(data))); err != nil {
		return ID{}, fmt.Errorf("save key: %w", err)
	}
	return id, nil
}

// RemoveKey deletes a key file, refusing the last one.
func (r *Repo) RemoveKey(ctx context.Context, id ID) error {
	h := Handle{Type: KeyFile, Name: id.String()}
	// Removing an absent file succeeds in a backend; an unknown key is an error here.
	if _, err := r.be.Stat(ctx, h); err != nil {
		return fmt.Errorf("key %s: %w", id.Short(), err)
	}
	n := 0
	if err := r.be.List(ctx, KeyFile, func(FileInfo) error { n++; return nil }); err != nil {
		return fmt.Errorf("list keys: %w", err)
	}
	if n <= 1 {
		return errors.New("refusing to remove the last key: the repository would be unreadable")
	}
	return r.be.Remove(ctx, h)
}

// Whoami returns the user and host names recorded in keys, locks and snapshots.
func Whoami() (username, hostname string) {
	if u, err := user.Current(); err == nil {
		username = u.Username
	}
	hostname, _ = os.Hostname()
	return username, hostname
}

func (r *Repo) Backend() Backend { return r.be }
func (r *Repo) Key() *crypto.Key { return r.key }
func (r *Repo) KeyID() ID        { return r.keyID }
func (r *Repo) Config() Config   { return r.cfg }
func (r *Repo) Location() string { return r.be.Location() }
func (r *Repo) Close() error     { return r.be.Close() }

// SetCache makes r keep copies of snapshots and index files (and the pack
// store, of tree packs) in c.
func (r *Repo) SetCache(c *FileCache) { r.cache = c }

// Cache returns the file cache, or nil.
func (r *Repo) Cache() *FileCache { return r.cache }

func (r *Repo) seal(plain []byte, t FileType) []byte {
	enc := Encode(make([]byte, 0, len(plain)/2+64), plain, CompressAuto)
	return r.key.Seal(make([]byte, 0, len(enc)+crypto.Overhead), enc, []byte(t))
}

func (r *Repo) open(sealed []byte, t FileType) ([]byte, error) {
	enc, err := r.key.Open(nil, sealed, []byte(t))
	if err != nil {
		return nil, err
	}
	return Decode(nil, enc, 0)
}

func (r *Repo) saveSealed(ctx context.Context, h Handle, plain []byte) error {
	sealed := r.seal(plain, h.Type)
	return r.be.Save(ctx, h, bytes.NewReader(sealed), int64(len(sealed)))
}

// SaveFile encrypts plain and stores it under its content address.
func (r *Repo) SaveFile(ctx context.Context, t FileType, plain []byte) (ID, error) {
	sealed := r.seal(plain, t)
	id := ID(crypto.Hash(sealed))
	h := Handle{Type: t, Name: id.String()}
	if err := r.be.Save(ctx, h, bytes.NewReader(sealed), int64(len(sealed))); err != nil {
		return ID{}, fmt.Errorf("save %s/%s: %w", t, id.Short(), err)
	}
	if r.cache != nil && cached(t) {
		r.cache.Put(h, sealed)
	}
	return id, nil
}

// LoadFile loads, verifies and decrypts t/id.
func (r *Repo) LoadFile(ctx context.Context, t FileType, id ID) ([]byte, error) {
	h := Handle{Type: t, Name: id.String()}
	sealed, ok := []byte(nil), false
	if r.cache != nil && cached(t) {
		sealed, ok = r.cache.Get(h)
	}
	if !ok {
		var err error
		if sealed, err = ReadAll(ctx, r.be, h); err != nil {
			return nil, fmt.Errorf("load %s/%s: %w", t, id.Short(), err)
		}
		if ID(crypto.Hash(sealed)) != id {
			return nil, fmt.Errorf("load %s/%s: content does not match its id", t, id)
		}
		if r.cache != nil && cached(t) {
			r.cache.Put(h, sealed)
		}
	}
	plain, err := r.open(sealed, t)
	if err != nil {
		return nil, fmt.Errorf("decrypt %s/%s: %w", t, id.Short(), err)
	}
	return plain, nil
}

// SaveJSON marshals v and saves it as a file of type t.
func (r *Repo) SaveJSON(ctx context.Context, t FileType, v any) (ID, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return ID{}, fmt.Errorf("encode %s: %w", t, err)
	}
	return r.SaveFile(ctx, t, b)
}

// LoadJSON loads t/id into v.
func (r *Repo) LoadJSON(ctx context.Context, t FileType, id ID, v any) error {
	b, err := r.LoadFile(ctx, t, id)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("decode %s/%s: %w", t, id.Short(), err)
	}
	return nil
}

// RemoveFile deletes t/id, and its cached copy.
func (r *Repo) RemoveFile(ctx context.Context, t FileType, id ID) error {
	h := Handle{Type: t, Name: id.String()}
	if r.cache != nil {
		r.cache.Remove(h)
	}
	return r.be.Remove(ctx, h)
}

// ListIDs calls fn for every well-named file of type t. A complete listing
// of a cached type also drops the cached copies of files that are gone
// (removed by another host's forget or prune), so the cache does not grow
// without end.
func (r *Repo) ListIDs(ctx context.Context, t FileType, fn func(ID, int64) error) error {
	var present map[string]struct{}
	if r.cache != nil && cached(t) {
		present = map[string]struct{}{}
	}
	err := r.be.List(ctx, t, func(fi FileInfo) error {
		id, err := ParseID(fi.Name)
		if err != nil {
			return nil // not ours (a temp file or a stray): ignore
		}
		if present != nil {
			present[fi.Name] = struct{}{}
		}
		return fn(id, fi.Size)
	})
	if err == nil && present != nil {
		r.cache.Retain(t, func(name string) bool { _, ok := present[name]; return ok })
	}
	return err
}

// ErrAmbiguous means an id prefix matched several files.
var ErrAmbiguous = errors.New("ambiguous id prefix")

// FindID resolves a unique hex prefix (at least 4 digits) among files of type t.
func (r *Repo) FindID(ctx context.Context, t FileType, prefix string) (ID, error) {
	prefix = strings.ToLower(prefix)
	if len(prefix) < 4 {
		return ID{}, fmt.Errorf("id prefix %q is too short: give at least 4 hex digits", prefix)
	}
	if len(prefix) == 64 {
		if id, err := ParseID(prefix); err == nil {
			return id, nil
		}
	}
	var found []ID
	err := r.ListIDs(ctx, t, func(id ID, _ int64) error {
		if strings.HasPrefix(id.String(), prefix) {
			found = append(found, id)
		}
		return nil
	})
	if err != nil {
		return ID{}, err
	}
	switch len(found) {
	case 0:
		return ID{}, fmt.Errorf("no %s matches %q: %w", strings.TrimSuffix(string(t), "s"), prefix, ErrNotFound)
	case 1:
		return found[0], nil
	}
	return ID{}, fmt.Errorf("%w %q: %d matches", ErrAmbiguous, prefix, len(found))
}

package source

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"

	"github.com/cairn-backup/cairn/snapshot"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// An s3 component is not a stream: its objects become the files of the
// snapshot (snapshot.BackupObjects, with a Bucket as the source), and
// PutObjects puts them back into a bucket.

// DefaultS3Endpoint is used when an s3 component names no endpoint.
const DefaultS3Endpoint = "https://s3.amazonaws.com"

// Bucket reads the objects of an S3 bucket whose keys start with a prefix.
// It is the snapshot.ObjectSource of an s3 component.
type Bucket struct {
	client *minio.Client
	core   minio.Core // GetObject with the response's headers
	name   string
	prefix string
}

var _ snapshot.ObjectSource = (*Bucket)(nil)

// s3Client returns a client of the server of s: s.Endpoint is
// http://HOST[:PORT] or https://HOST[:PORT]. Requests use path-style
// addressing, which every S3 server accepts, and are signed with
// s.AccessKey and s.SecretKey; without them they are anonymous.
func s3Client(s Spec) (*minio.Client, error) {
	endpoint := s.Endpoint
	if endpoint == "" {
		endpoint = DefaultS3Endpoint
	}
	const want = "want http://HOST[:PORT] or https://HOST[:PORT]"
	u, err := url.Parse(endpoint)
	if err != nil {
		return nil, fmt.Errorf("endpoint %q: %v; %s", endpoint, err, want)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" || u.User != nil ||
		strings.Trim(u.Path, "/") != "" || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("endpoint %q: %s", endpoint, want)
	}
	secure := u.Scheme == "https"
	tr, err := minio.DefaultTransport(secure)
	if err != nil {
		return nil, fmt.Errorf("s3 transport: %w", err)
	}
	client, err := minio.New(u.Host, &minio.Options{
		Creds:        credentials.NewStaticV4(s.AccessKey, s.SecretKey, ""),
		Secure:       secure,
		Transport:    tr,
		BucketLookup: minio.BucketLookupPath,
	})
	if err != nil {
		return nil, fmt.Errorf("endpoint %q: %w", endpoint, err)
	}
	return client, nil
}

// OpenBucket returns the bucket of s (s.Bucket on the server of
// s.Endpoint), whose objects under s.Prefix it reads. It does not contact
// the server.
func OpenBucket(s Spec) (*Bucket, error) {
	if s.Bucket == "" {
		return nil, fmt.Errorf("component %q: no bucket", s.Name)
	}
	client, err := s3Client(s)
	if err != nil {
		return nil, fmt.Errorf("component %q: %w", s.Name, err)
	}
	return &Bucket{client: client, core: minio.Core{Client: client}, name: s.Bucket, prefix: s.Prefix}, nil
}

// List calls fn for every object under the prefix, in key order. The
// listing has no metadata: that of the objects read comes from Open.
func (b *Bucket) List(ctx context.Context, fn func(snapshot.Object) error) error {
	ctx, cancel := context.WithCancel(ctx)
	ch := b.client.ListObjects(ctx, b.name, minio.ListObjectsOptions{Prefix: b.prefix, Recursive: true})
	defer func() {
		// The lister stops once cancelled, but only after its last send.
		cancel()
		for range ch {
		}
	}()
	for o := range ch {
		if o.Err != nil {
			return fmt.Errorf("list bucket %s: %w", b.name, o.Err)
		}
		if err := fn(snapshot.Object{Key: o.Key, Size: o.Size, ETag: o.ETag, LastModified: o.LastModified}); err != nil {
			return err
		}
	}
	return nil
}

// Open starts the download of object key. The Object returned is the
// server's answer, with the content type and user metadata.
func (b *Bucket) Open(ctx context.Context, key string) (io.ReadCloser, snapshot.Object, error) {
	rc, info, _, err := b.core.GetObject(ctx, b.name, key, minio.GetObjectOptions{})
	if err != nil {
		return nil, snapshot.Object{}, fmt.Errorf("get object %s: %w", key, err)
	}
	o := snapshot.Object{Key: key, Size: info.Size, ETag: info.ETag, LastModified: info.LastModified,
		ContentType: info.ContentType}
	for k, v := range info.UserMetadata {
		if o.Metadata == nil {
			o.Metadata = map[string]string{}
		}
		// S3 compares metadata names without case, and gives them in
		// lower case; HTTP headers come canonicalised ("Owner").
		o.Metadata[strings.ToLower(k)] = v
	}
	return rc, o, nil
}

// PutObjects writes objects into bucket s.Bucket on the server of
// s.Endpoint, creating the bucket if it does not exist. walk calls put for
// each object, with its content (for example snapshot.WalkObjects over a
// snapshot of an s3 component); each is written under its key as given,
// with its content type and user metadata. The server computes the ETag
// anew: an object uploaded in parts may get another ETag than it had.
//
// Unless overwrite, the bucket must hold no object whose key starts with
// s.Prefix (no object at all when Prefix is empty), and nothing is written
// otherwise. With overwrite, objects of the same keys are replaced and the
// others left alone.
func PutObjects(ctx context.Context, s Spec, overwrite bool, walk func(put func(o snapshot.Object, r io.Reader) error) error) error {
	if s.Bucket == "" {
		return errors.New("restore objects: no target bucket")
	}
	client, err := s3Client(s)
	if err != nil {
		return fmt.Errorf("restore objects: %w", err)
	}
	if err := makeBucket(ctx, client, s.Bucket); err != nil {
		return err
	}
	if !overwrite {
		key, found, err := firstKey(ctx, client, s.Bucket, s.Prefix)
		if err != nil {
			return err
		}
		if found {
			where := "bucket " + s.Bucket
			if s.Prefix != "" {
				where += " under " + s.Prefix
			}
			return fmt.Errorf("restore objects: %s is not empty (it holds %s); restore into an empty bucket, or overwrite", where, key)
		}
	}
	return walk(func(o snapshot.Object, r io.Reader) error {
		opts := minio.PutObjectOptions{ContentType: o.ContentType, UserMetadata: map[string]string{}}
		for k, v := range o.Metadata {
			// Prefixed here: minio-go would send a name such as
			// "cache-control" as that header, not as metadata.
			opts.UserMetadata["x-amz-meta-"+k] = v
		}
		if _, err := client.PutObject(ctx, s.Bucket, o.Key, r, o.Size, opts); err != nil {
			return fmt.Errorf("put object %s into bucket %s: %w", o.Key, s.Bucket, err)
		}
		return nil
	})
}

// makeBucket creates bucket unless it exists.
func makeBucket(ctx context.Context, client *minio.Client, bucket string) error {
	ok, err := client.BucketExists(ctx, bucket)
	if err != nil {
		return fmt.Errorf("check bucket %s: %w", bucket, err)
	}
	if ok {
		return nil
	}
	err = client.MakeBucket(ctx, bucket, minio.MakeBucketOptions{})
	var er minio.ErrorResponse
	if err != nil && !(errors.As(err, &er) && er.Code == minio.BucketAlreadyOwnedByYou) {
		return fmt.Errorf("create bucket %s: %w", bucket, err)
	}
	return nil
}

// firstKey returns the first key under prefix in bucket, if there is one.
func firstKey(ctx context.Context, client *minio.Client, bucket, prefix string) (string, bool, error) {
	ctx, cancel := context.WithCancel(ctx)
	ch := client.ListObjects(ctx, bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true, MaxKeys: 1})
	defer func() {
		cancel()
		for range ch {
		}
	}()
	o, ok := <-ch
	switch {
	case !ok:
		return "", false, nil
	case o.Err != nil:
		return "", false, fmt.Errorf("list bucket %s: %w", bucket, o.Err)
	}
	return o.Key, true, nil
}

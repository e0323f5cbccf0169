package offsite

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/minio/minio-go/v7"
)

// UploadStats count what an upload did.
type UploadStats struct {
	Objects      int   `json:"objects"`         // objects written
	Skipped      int   `json:"objects_skipped"` // objects already in the bucket (same content)
	Parts        int   `json:"parts"`           // parts uploaded
	PartsResumed int   `json:"parts_resumed"`   // parts of an interrupted upload kept
	Bytes        int64 `json:"bytes"`           // bytes sent
	BytesResumed int64 `json:"bytes_resumed"`   // bytes not sent again
	LockExtended int   `json:"lock_extended"`   // objects of older points whose retention was extended
}

func (s *UploadStats) add(o UploadStats) {
	s.Objects += o.Objects
	s.Skipped += o.Skipped
	s.Parts += o.Parts
	s.PartsResumed += o.PartsResumed
	s.Bytes += o.Bytes
	s.BytesResumed += o.BytesResumed
	s.LockExtended += o.LockExtended
}

var md5ETag = regexp.MustCompile(`^[0-9a-f]{32}$`)

// cleanETag strips the quotes S3 puts around ETags.
func cleanETag(e string) string { return strings.ToLower(strings.Trim(e, `"`)) }

// partPlan is how a file of size bytes is cut into parts.
func (t *Target) partPlan(size int64) (n int, ps int64) {
	ps = t.PartSize
	// S3 allows at most 10000 parts: grow the parts for huge files.
	for size > ps*10000 {
		ps *= 2
	}
	n = int((size + ps - 1) / ps)
	return max(n, 1), ps
}

// putSmall writes a small object from memory with its SHA-256 in the
// metadata, unless the current version already has that content.
func (t *Target) putSmall(ctx context.Context, key string, data []byte, until time.Time) (Object, bool, error) {
	sum := sha256.Sum256(data)
	sha := hex.EncodeToString(sum[:])
	if oi, err := t.c.StatObject(ctx, t.Bucket, key, minio.StatObjectOptions{}); err == nil &&
		oi.Size == int64(len(data)) && oi.UserMetadata["Sendense-Sha256"] == sha {
		return Object{Size: oi.Size, SHA256: sha, VersionID: oi.VersionID}, true, nil
	}
	m := md5.Sum(data)
	info, err := t.c.PutObject(ctx, t.Bucket, key, bytes.NewReader(data), int64(len(data)),
		base64.StdEncoding.EncodeToString(m[:]), sha, t.putOptions(until, sha))
	if err != nil {
		return Object{}, false, t.wrap(err, "writing "+key)
	}
	if e := cleanETag(info.ETag); md5ETag.MatchString(e) && e != hex.EncodeToString(m[:]) {
		return Object{}, false, fmt.Errorf("offsite target %s: %s: the endpoint stored other bytes than sent (ETag %s, MD5 %x)", t.Name, key, e, m)
	}
	return Object{Size: int64(len(data)), SHA256: sha, VersionID: info.VersionID}, false, nil
}

// uploadFile copies the file at path to key, in parts uploaded in
// parallel, resuming an interrupted multipart upload of the same key
// (its parts whose MD5 matches the file are kept). An object already at
// key with the same bytes (size and ETag) is kept. It returns the
// object's size, SHA-256 and version. progress is called with bytes
// sent or kept.
func (t *Target) uploadFile(ctx context.Context, key, path string, until time.Time, progress func(int64)) (Object, UploadStats, error) {
	var st UploadStats
	// The repository's own file, never what a symbolic link points to.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return Object{}, st, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return Object{}, st, err
	}
	if !fi.Mode().IsRegular() {
		return Object{}, st, fmt.Errorf("%s is not a regular file", path)
	}
	size := fi.Size()
	n, ps := t.partPlan(size)

	// Already there (a cut after the upload completed, before the seal)?
	if oi, err := t.c.StatObject(ctx, t.Bucket, key, minio.StatObjectOptions{}); err == nil && oi.Size == size {
		sha, etag, err := hashFile(ctx, f, size, n, ps)
		if err != nil {
			return Object{}, st, err
		}
		if cleanETag(oi.ETag) == etag {
			st.Skipped++
			st.BytesResumed += size
			if progress != nil {
				progress(size)
			}
			return Object{Size: size, SHA256: sha, VersionID: oi.VersionID}, st, nil
		}
	}

	uploadID, have, err := t.resumable(ctx, key, ps)
	if err != nil {
		return Object{}, st, err
	}
	if uploadID == "" {
		uploadID, err = t.c.NewMultipartUpload(ctx, t.Bucket, key, t.putOptions(until, ""))
		if err != nil {
			return Object{}, st, t.wrap(err, "starting the upload of "+key)
		}
	}

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	// The whole object's SHA-256, read in order next to the parts.
	shaDone := make(chan string, 1)
	go func() {
		h := sha256.New()
		if err := copyRange(ctx, h, f, 0, size); err != nil {
			cancel(err)
			shaDone <- ""
			return
		}
		shaDone <- hex.EncodeToString(h.Sum(nil))
	}()

	md5s := make([][]byte, n)
	var mu sync.Mutex
	var failed error
	var parts, resumed atomic.Int64
	var sent, kept atomic.Int64
	parallel(ctx, t.Conns, n, func(i int) {
		off := int64(i) * ps
		length := min(ps, size-off)
		if p, ok := have[i+1]; ok && p.Size == length {
			// A part of the cut upload: kept if it holds the file's bytes.
			h := md5.New()
			if err := copyRange(ctx, h, f, off, length); err != nil {
				cancel(err)
				return
			}
			if sum := h.Sum(nil); cleanETag(p.ETag) == hex.EncodeToString(sum) {
				md5s[i] = sum
				resumed.Add(1)
				kept.Add(length)
				if progress != nil {
					progress(length)
				}
				return
			}
		}
		// The part is read once: its MD5 is computed as it is sent and
		// compared with the ETag the server computed from what it got.
		// (Content-MD5 would need a pass over the part before sending.)
		body := &md5Reader{sr: io.NewSectionReader(f, off, length), h: md5.New()}
		op, err := t.c.PutObjectPart(ctx, t.Bucket, key, uploadID, i+1, body, length,
			minio.PutObjectPartOptions{DisableContentSha256: true})
		if err == nil {
			md5s[i] = body.h.Sum(nil)
			if e := cleanETag(op.ETag); md5ETag.MatchString(e) && e != hex.EncodeToString(md5s[i]) {
				err = fmt.Errorf("the endpoint stored other bytes than sent (part %d: ETag %s, MD5 %x); run the sync again", i+1, e, md5s[i])
			}
		}
		if err != nil {
			mu.Lock()
			if failed == nil {
				failed = t.wrap(err, fmt.Sprintf("uploading part %d of %s", i+1, key))
			}
			mu.Unlock()
			cancel(err)
			return
		}
		parts.Add(1)
		sent.Add(length)
		if progress != nil {
			progress(length)
		}
		if t.afterPart != nil {
			t.afterPart(key, i+1)
		}
	})
	sha := <-shaDone
	st.Parts, st.PartsResumed = int(parts.Load()), int(resumed.Load())
	st.Bytes, st.BytesResumed = sent.Load(), kept.Load()
	if failed != nil {
		return Object{}, st, failed
	}
	if err := context.Cause(ctx); err != nil {
		return Object{}, st, err
	}
	complete := make([]minio.CompletePart, n)
	for i := range complete {
		complete[i] = minio.CompletePart{PartNumber: i + 1, ETag: hex.EncodeToString(md5s[i])}
	}
	info, err := t.c.CompleteMultipartUpload(ctx, t.Bucket, key, uploadID, complete, minio.PutObjectOptions{})
	if err != nil {
		return Object{}, st, t.wrap(err, "completing the upload of "+key)
	}
	if e, want := cleanETag(info.ETag), multipartETag(md5s); strings.Contains(e, "-") && e != want {
		return Object{}, st, fmt.Errorf("offsite target %s: %s: the endpoint assembled other bytes than sent (ETag %s, expected %s)", t.Name, key, e, want)
	}
	st.Objects++
	return Object{Size: size, SHA256: sha, VersionID: info.VersionID}, st, nil
}

// multipartETag is the ETag S3 gives an object assembled from parts with
// these MD5s.
func multipartETag(md5s [][]byte) string {
	h := md5.New()
	for _, m := range md5s {
		h.Write(m)
	}
	return fmt.Sprintf("%x-%d", h.Sum(nil), len(md5s))
}

// hashFile computes the SHA-256 of f and the ETag a multipart upload of
// it in n parts of ps bytes gets.
func hashFile(ctx context.Context, f *os.File, size int64, n int, ps int64) (sha, etag string, err error) {
	h := sha256.New()
	md5s := make([][]byte, n)
	for i := 0; i < n; i++ {
		off := int64(i) * ps
		m := md5.New()
		if err := copyRange(ctx, io.MultiWriter(h, m), f, off, min(ps, size-off)); err != nil {
			return "", "", err
		}
		md5s[i] = m.Sum(nil)
	}
	return hex.EncodeToString(h.Sum(nil)), multipartETag(md5s), nil
}

// resumable finds an unfinished multipart upload of key made with parts
// of ps bytes and lists its parts (by number). Other unfinished uploads of
// the key are aborted: only one upload of a key is resumed.
func (t *Target) resumable(ctx context.Context, key string, ps int64) (string, map[int]minio.ObjectPart, error) {
	var uploads []minio.ObjectMultipartInfo
	keyMarker, idMarker := "", ""
	for {
		res, err := t.c.ListMultipartUploads(ctx, t.Bucket, key, keyMarker, idMarker, "", 1000)
		if err != nil {
			return "", nil, t.wrap(err, "listing unfinished uploads of "+key)
		}
		for _, u := range res.Uploads {
			if u.Key == key {
				uploads = append(uploads, u)
			}
		}
		if !res.IsTruncated {
			break
		}
		keyMarker, idMarker = res.NextKeyMarker, res.NextUploadIDMarker
	}
	slices.SortFunc(uploads, func(a, b minio.ObjectMultipartInfo) int { return b.Initiated.Compare(a.Initiated) })
	chosen := ""
	var have map[int]minio.ObjectPart
	for _, u := range uploads {
		if chosen == "" {
			parts, err := t.listParts(ctx, key, u.UploadID)
			if err != nil {
				return "", nil, err
			}
			if p, ok := parts[1]; !ok || p.Size == ps || len(parts) == 1 {
				chosen, have = u.UploadID, parts
				continue
			}
		}
		if err := t.c.AbortMultipartUpload(ctx, t.Bucket, key, u.UploadID); err != nil {
			return "", nil, t.wrap(err, "aborting an old unfinished upload of "+key)
		}
	}
	return chosen, have, nil
}

func (t *Target) listParts(ctx context.Context, key, uploadID string) (map[int]minio.ObjectPart, error) {
	out := map[int]minio.ObjectPart{}
	marker := 0
	for {
		res, err := t.c.ListObjectParts(ctx, t.Bucket, key, uploadID, marker, 1000)
		if err != nil {
			return nil, t.wrap(err, "listing the uploaded parts of "+key)
		}
		for _, p := range res.ObjectParts {
			out[p.PartNumber] = p
		}
		if !res.IsTruncated || res.NextPartNumberMarker <= marker {
			return out, nil
		}
		marker = res.NextPartNumberMarker
	}
}

// md5Reader hashes what is read from a part; the client rewinds it
// (Seek to 0) to send the part again, which starts the hash again.
type md5Reader struct {
	sr *io.SectionReader
	h  hash.Hash
}

func (r *md5Reader) Read(p []byte) (int, error) {
	n, err := r.sr.Read(p)
	r.h.Write(p[:n])
	return n, err
}

func (r *md5Reader) Seek(off int64, whence int) (int64, error) {
	if off != 0 || whence != io.SeekStart {
		return 0, fmt.Errorf("md5Reader: seek to %d (%d): only rewinds", off, whence)
	}
	r.h.Reset()
	return r.sr.Seek(0, io.SeekStart)
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 1<<20); return &b }}

// copyRange writes length bytes of f from off to w.
func copyRange(ctx context.Context, w io.Writer, f io.ReaderAt, off, length int64) error {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	for length > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		k := min(int64(len(buf)), length)
		n, err := f.ReadAt(buf[:k], off)
		if int64(n) < k {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
		w.Write(buf[:n])
		off += int64(n)
		length -= int64(n)
	}
	return nil
}

package auth

import (
	"context"
	"fmt"
	"strings"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/pkg/names"
	"github.com/osvc/osvc/server/sites"
)

// Resource names what a request is about for the audit: its first set
// field among name, parent, id, sha256 and site.
func Resource(req any) string {
	m, ok := req.(proto.Message)
	if !ok {
		return ""
	}
	r := m.ProtoReflect()
	for _, f := range []protoreflect.Name{"name", "parent", "id", "sha256", "image_id", "site"} {
		fd := r.Descriptor().Fields().ByName(f)
		if fd != nil && fd.Kind() == protoreflect.StringKind && !fd.IsList() {
			if v := r.Get(fd).String(); v != "" {
				return v
			}
		}
	}
	return ""
}

// maxAuditReason bounds the reason an audit event keeps of a request.
const maxAuditReason = 1024

// Reason is the reason a request gives, for the audit: its string field
// reason, cut to maxAuditReason bytes at a character boundary.
func Reason(req any) string {
	m, ok := req.(proto.Message)
	if !ok {
		return ""
	}
	r := m.ProtoReflect()
	fd := r.Descriptor().Fields().ByName("reason")
	if fd == nil || fd.Kind() != protoreflect.StringKind || fd.IsList() {
		return ""
	}
	v := r.Get(fd).String()
	if len(v) <= maxAuditReason {
		return v
	}
	n := maxAuditReason
	for n > 0 && !utf8.RuneStart(v[n]) {
		n--
	}
	return v[:n]
}

// named only names the resource.
func named(_ context.Context, _ Resolver, _ *Principal, req any) (string, error) {
	return Resource(req), nil
}

func denied(format string, args ...any) error {
	return errdefs.Newf(errdefs.ErrPermissionDenied, format, args...)
}

// requireSite refuses a principal without site.
func requireSite(p *Principal, site, resource string) error {
	if p.HasSite(site) {
		return nil
	}
	return denied("%s may not change %s of site %s: its sites are %v; ask an admin for a token of that site", p.ID, resource, names.Quote(site), p.Sites)
}

// siteNamed names the site a request carries for the audit: sites/{code}.
func siteNamed(_ context.Context, _ Resolver, _ *Principal, req any) (string, error) {
	site := req.(interface{ GetSite() *osvcv1.Site }).GetSite()
	if site.GetName() != "" {
		return site.GetName(), nil
	}
	return sites.Name(site.GetCode()), nil
}

// importSite checks the site an image is imported into.
func importSite(_ context.Context, _ Resolver, p *Principal, req any) (string, error) {
	r := req.(*osvcv1.ImportImageRequest)
	resource := "images/" + r.GetImageId()
	return resource, requireSite(p, r.GetSite(), resource)
}

// imageSite checks the site of the image a request names.
func imageSite(ctx context.Context, res Resolver, p *Principal, req any) (string, error) {
	image := Resource(req)
	if p.Role == osvcv1.Role_ROLE_ADMIN {
		return image, nil
	}
	site, err := res.ImageSite(ctx, image)
	if err != nil {
		return image, err
	}
	return image, requireSite(p, site, image)
}

// scheduleSite checks the site of the image whose schedule a request
// names (UpdateScheduleRequest carries it in schedule.name).
func scheduleSite(ctx context.Context, res Resolver, p *Principal, req any) (string, error) {
	sched := Resource(req)
	if u, ok := req.(*osvcv1.UpdateScheduleRequest); ok {
		sched = u.GetSchedule().GetName()
	}
	if p.Role == osvcv1.Role_ROLE_ADMIN {
		return sched, nil
	}
	image, _, ok := strings.Cut(sched, "/schedules/")
	if !ok {
		return sched, errdefs.InvalidArgument("name", fmt.Sprintf("want images/{id}/schedules/{id}, got %s", names.Quote(sched)))
	}
	site, err := res.ImageSite(ctx, image)
	if err != nil {
		return sched, err
	}
	return sched, requireSite(p, site, sched)
}

// runSite checks the site of the image of the run a request names.
func runSite(ctx context.Context, res Resolver, p *Principal, req any) (string, error) {
	run := Resource(req)
	if p.Role == osvcv1.Role_ROLE_ADMIN {
		return run, nil
	}
	site, err := res.RunSite(ctx, run)
	if err != nil {
		return run, err
	}
	return run, requireSite(p, site, run)
}

// agentBlob lets an agent read only the blobs of the runs it holds.
func agentBlob(ctx context.Context, res Resolver, p *Principal, req any) (string, error) {
	sha := Resource(req)
	if p.Role != osvcv1.Role_ROLE_AGENT {
		return sha, nil
	}
	ok, err := res.AgentMayRead(ctx, p.Agent, sha)
	if err != nil {
		return sha, err
	}
	if !ok {
		return sha, denied("agent %s may read only the image and update files of the runs assigned to it; %s is not one", p.Agent, names.Quote(sha))
	}
	return sha, nil
}

// agentHoldsRun lets an agent store content only while it services a run.
func agentHoldsRun(ctx context.Context, res Resolver, p *Principal, req any) (string, error) {
	resource := Resource(req)
	if p.Role != osvcv1.Role_ROLE_AGENT {
		return resource, nil
	}
	ok, err := res.AgentHoldsRun(ctx, p.Agent)
	if err != nil {
		return resource, err
	}
	if !ok {
		return resource, denied("agent %s holds no run: it may upload only the result of a run it services", p.Agent)
	}
	return resource, nil
}

// ownHello lets an agent connect only as itself: the Hello that opens its
// stream must name the agent and site its certificate names.
func ownHello(_ context.Context, _ Resolver, p *Principal, req any) (string, error) {
	r, ok := req.(*osvcv1.ConnectRequest)
	if !ok || r.GetHello() == nil {
		return "", nil // only the stream's first message is checked; recvHello refuses a stream without Hello
	}
	h := r.GetHello()
	if h.GetName() != p.Agent || len(p.Sites) != 1 || h.GetSite() != p.Sites[0] {
		return "agents/" + h.GetName(), denied("this certificate is agent %s of site %s; it cannot connect as %s of site %s",
			p.Agent, siteOf(p), names.Quote(h.GetName()), names.Quote(h.GetSite()))
	}
	return "agents/" + h.GetName(), nil
}

func siteOf(p *Principal) string {
	if len(p.Sites) == 1 {
		return p.Sites[0]
	}
	return fmt.Sprint(p.Sites)
}

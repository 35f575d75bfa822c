package auth

import (
	"context"

	"google.golang.org/grpc/health/grpc_health_v1"
	reflectionv1 "google.golang.org/grpc/reflection/grpc_reflection_v1"
	reflectionv1alpha "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
)

// Permission is what a method requires of its caller.
type Permission int

const (
	// Public methods need no credential: health, reflection, and Enroll,
	// which checks its join token itself.
	Public Permission = iota + 1
	// Authenticated methods need any valid credential.
	Authenticated
	// Read methods need admin, operator or viewer.
	Read
	// Operate methods need admin, or operator of the resource's site.
	Operate
	// Admin methods need admin.
	Admin
	// Agent methods need an enrolled agent, scoped to its own work.
	Agent
	// Upload needs admin, operator, or an agent that holds a run.
	Upload
	// ReadContent needs a Read role, or an agent reading a blob of a run it holds.
	ReadContent
)

// Rule is one method's entry in the table.
type Rule struct {
	Permission Permission
	// Mutates says the call changes state: it is audited whatever its result.
	Mutates bool
	// scope checks the request against the principal (site, ownership) and
	// names the resource for the audit; nil for none.
	scope scopeFunc
	// precheck checks the principal before the handler runs, for what needs
	// no request: a client stream's handler may never read one.
	precheck scopeFunc
}

// scopeFunc checks one request message of a call against its principal.
type scopeFunc func(ctx context.Context, r Resolver, p *Principal, req any) (resource string, err error)

// Resolver answers what the scope checks need to know about resources.
type Resolver interface {
	// ImageSite is the site of an image, images/{id}.
	ImageSite(ctx context.Context, image string) (string, error)
	// RunSite is the site of the image a run services, runs/{id}.
	RunSite(ctx context.Context, run string) (string, error)
	// AgentMayRead reports whether a blob belongs to a run assigned to agent
	// (its id, the name without agents/): its image version or one of its
	// update files; or is a file the agent is to hold as a distribution point.
	AgentMayRead(ctx context.Context, agent, sha256 string) (bool, error)
	// AgentHoldsRun reports whether agent holds a run now.
	AgentHoldsRun(ctx context.Context, agent string) (bool, error)
}

// Rules is the method → permission table. Every method the server serves
// has an entry; a method without one is refused (and a test fails).
var Rules = map[string]Rule{
	grpc_health_v1.Health_Check_FullMethodName:                             {Permission: Public},
	grpc_health_v1.Health_List_FullMethodName:                              {Permission: Public},
	grpc_health_v1.Health_Watch_FullMethodName:                             {Permission: Public},
	reflectionv1.ServerReflection_ServerReflectionInfo_FullMethodName:      {Permission: Public},
	reflectionv1alpha.ServerReflection_ServerReflectionInfo_FullMethodName: {Permission: Public},

	osvcv1.AccessService_CreateToken_FullMethodName:     {Permission: Admin, Mutates: true},
	osvcv1.AccessService_ListTokens_FullMethodName:      {Permission: Admin},
	osvcv1.AccessService_RevokeToken_FullMethodName:     {Permission: Admin, Mutates: true, scope: named},
	osvcv1.AccessService_WhoAmI_FullMethodName:          {Permission: Authenticated},
	osvcv1.AccessService_ListAuditEvents_FullMethodName: {Permission: Admin},

	osvcv1.AgentService_Connect_FullMethodName:          {Permission: Agent, scope: ownHello},
	osvcv1.AgentService_ListAgents_FullMethodName:       {Permission: Read},
	osvcv1.AgentService_CreateJoinToken_FullMethodName:  {Permission: Admin, Mutates: true, scope: named},
	osvcv1.AgentService_ListJoinTokens_FullMethodName:   {Permission: Admin},
	osvcv1.AgentService_RevokeJoinToken_FullMethodName:  {Permission: Admin, Mutates: true, scope: named},
	osvcv1.AgentService_Enroll_FullMethodName:           {Permission: Public, Mutates: true},
	osvcv1.AgentService_RenewCertificate_FullMethodName: {Permission: Agent, Mutates: true},
	osvcv1.AgentService_RevokeAgent_FullMethodName:      {Permission: Admin, Mutates: true, scope: named},
	osvcv1.AgentService_DeleteAgent_FullMethodName:      {Permission: Admin, Mutates: true, scope: named},

	osvcv1.ContentService_Read_FullMethodName:          {Permission: ReadContent, scope: agentBlob},
	osvcv1.ContentService_Write_FullMethodName:         {Permission: Upload, Mutates: true, precheck: agentHoldsRun},
	osvcv1.ContentService_GetContent_FullMethodName:    {Permission: ReadContent, scope: agentBlob},
	osvcv1.ContentService_GetChunkIndex_FullMethodName: {Permission: ReadContent, scope: agentBlob},
	osvcv1.ContentService_Locate_FullMethodName:        {Permission: Agent, scope: agentBlob},
	osvcv1.ContentService_LocateLibrary_FullMethodName: {Permission: Agent},
	osvcv1.ContentService_Adopt_FullMethodName:         {Permission: Agent, Mutates: true, precheck: agentHoldsRun},

	osvcv1.ImageService_ImportImage_FullMethodName:  {Permission: Operate, Mutates: true, scope: importSite},
	osvcv1.ImageService_GetImage_FullMethodName:     {Permission: Read},
	osvcv1.ImageService_ListImages_FullMethodName:   {Permission: Read},
	osvcv1.ImageService_InspectImage_FullMethodName: {Permission: Operate, Mutates: true, scope: imageSite},
	// An operator of the image's site rolls it back or deletes it.
	osvcv1.ImageService_RollbackImage_FullMethodName: {Permission: Operate, Mutates: true, scope: imageSite},
	osvcv1.ImageService_DeleteImage_FullMethodName:   {Permission: Operate, Mutates: true, scope: imageSite},

	// An operator of the image's site distributes it; any reader follows
	// the distribution points.
	osvcv1.DistributionService_DistributeImage_FullMethodName:        {Permission: Operate, Mutates: true, scope: imageSite},
	osvcv1.DistributionService_ListDistributionPoints_FullMethodName: {Permission: Read},

	osvcv1.ServicingService_CreateSchedule_FullMethodName: {Permission: Operate, Mutates: true, scope: imageSite},
	osvcv1.ServicingService_GetRun_FullMethodName:         {Permission: Read},
	osvcv1.ServicingService_ListRuns_FullMethodName:       {Permission: Read},
	osvcv1.ServicingService_WatchRun_FullMethodName:       {Permission: Read},
	osvcv1.ServicingService_CancelRun_FullMethodName:      {Permission: Operate, Mutates: true, scope: runSite},
	osvcv1.ServicingService_GetSchedule_FullMethodName:    {Permission: Read},
	osvcv1.ServicingService_PlanSchedule_FullMethodName:   {Permission: Read},
	osvcv1.ServicingService_ListSchedules_FullMethodName:  {Permission: Read},
	osvcv1.ServicingService_UpdateSchedule_FullMethodName: {Permission: Operate, Mutates: true, scope: scheduleSite},
	osvcv1.ServicingService_DeleteSchedule_FullMethodName: {Permission: Operate, Mutates: true, scope: scheduleSite},

	// Sites are the hierarchy itself: only an admin changes it.
	osvcv1.SiteService_CreateSite_FullMethodName: {Permission: Admin, Mutates: true, scope: siteNamed},
	osvcv1.SiteService_GetSite_FullMethodName:    {Permission: Read},
	osvcv1.SiteService_ListSites_FullMethodName:  {Permission: Read},
	osvcv1.SiteService_UpdateSite_FullMethodName: {Permission: Admin, Mutates: true, scope: siteNamed},
	osvcv1.SiteService_DeleteSite_FullMethodName: {Permission: Admin, Mutates: true, scope: named},

	// Updates are one catalog for every site: any operator imports them.
	osvcv1.UpdateService_ImportUpdates_FullMethodName:         {Permission: Operate, Mutates: true},
	osvcv1.UpdateService_GetUpdate_FullMethodName:             {Permission: Read},
	osvcv1.UpdateService_ListUpdates_FullMethodName:           {Permission: Read},
	osvcv1.UpdateService_ListApplicableUpdates_FullMethodName: {Permission: Read},
	// Deleting one takes it from every site: an operator's scope is its
	// own sites, so only an admin deletes.
	osvcv1.UpdateService_DeleteUpdate_FullMethodName: {Permission: Admin, Mutates: true, scope: named},
}

// allows reports whether p's role passes perm, before any scope check.
func allows(perm Permission, p *Principal) bool {
	role := p.Role
	switch perm {
	case Public, Authenticated:
		return true
	case Read:
		return role == osvcv1.Role_ROLE_ADMIN || role == osvcv1.Role_ROLE_OPERATOR || role == osvcv1.Role_ROLE_VIEWER
	case Operate:
		return role == osvcv1.Role_ROLE_ADMIN || role == osvcv1.Role_ROLE_OPERATOR
	case Admin:
		return role == osvcv1.Role_ROLE_ADMIN
	case Agent:
		return role == osvcv1.Role_ROLE_AGENT
	case Upload:
		return role == osvcv1.Role_ROLE_ADMIN || role == osvcv1.Role_ROLE_OPERATOR || role == osvcv1.Role_ROLE_AGENT
	case ReadContent:
		return role != osvcv1.Role_ROLE_UNSPECIFIED
	}
	return false
}

"""Tags of thing groups through boto3 against the real server (issue 15): CreateDynamicThingGroup
keeps its `tags` (ListTagsForResource answers them); TagResource, UntagResource and
ListTagsForResource work on static and dynamic thing groups within AWS's rules; a deleted
group's tags go with it; other resources' tags are not kept (refused by ARN type)."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.server_harness import RunningServer


def _code(call: Any, **kwargs: Any) -> str:
    with pytest.raises(ClientError) as caught:
        call(**kwargs)
    return str(caught.value.response["Error"]["Code"])


def test_dynamic_group_tags_are_kept_and_managed_like_aws(srv: RunningServer) -> None:
    iot = srv.client("iot")
    tags = [{"Key": "team", "Value": "field"}, {"Key": "cost center", "Value": "4/2"}]
    arn = iot.create_dynamic_thing_group(thingGroupName="tagged-dyn", queryString="attributes.ring:tagged",
                                         tags=tags)["thingGroupArn"]
    assert iot.list_tags_for_resource(resourceArn=arn)["tags"] == sorted(tags, key=lambda t: t["Key"])
    iot.tag_resource(resourceArn=arn, tags=[{"Key": "team", "Value": "lab"}, {"Key": "tier", "Value": ""}])
    iot.untag_resource(resourceArn=arn, tagKeys=["cost center", "absent"])
    assert iot.list_tags_for_resource(resourceArn=arn)["tags"] == [{"Key": "team", "Value": "lab"},
                                                                   {"Key": "tier", "Value": ""}]
    assert _code(iot.tag_resource, resourceArn=arn, tags=[{"Key": "aws:x", "Value": "v"}]) \
        == "InvalidRequestException"
    many = [{"Key": f"k{i}", "Value": "v"} for i in range(49)]
    assert _code(iot.tag_resource, resourceArn=arn, tags=many) == "LimitExceededException"
    # Refused tags at creation: no group is created.
    assert _code(iot.create_dynamic_thing_group, thingGroupName="bad-tags", queryString="thingName:x",
                 tags=[{"Key": "AWS:reserved", "Value": "v"}]) == "InvalidRequestException"
    assert _code(iot.describe_thing_group, thingGroupName="bad-tags") == "ResourceNotFoundException"
    # The tags go with the group: a new group of the same name starts without them.
    iot.delete_dynamic_thing_group(thingGroupName="tagged-dyn")
    assert _code(iot.list_tags_for_resource, resourceArn=arn) == "ResourceNotFoundException"
    iot.create_dynamic_thing_group(thingGroupName="tagged-dyn", queryString="attributes.ring:tagged")
    assert iot.list_tags_for_resource(resourceArn=arn)["tags"] == []


def test_static_group_tags_and_other_resources(srv: RunningServer) -> None:
    iot = srv.client("iot")
    arn = iot.create_thing_group(thingGroupName="tagged-static")["thingGroupArn"]
    iot.tag_resource(resourceArn=arn, tags=[{"Key": "site", "Value": "north"}])
    assert iot.list_tags_for_resource(resourceArn=arn)["tags"] == [{"Key": "site", "Value": "north"}]
    thing_arn = iot.create_thing(thingName="tagged-thing")["thingArn"]
    assert _code(iot.list_tags_for_resource, resourceArn=thing_arn) == "InvalidRequestException"
    missing = arn.replace("tagged-static", "no-such-group")
    assert _code(iot.tag_resource, resourceArn=missing, tags=[{"Key": "a", "Value": "b"}]) \
        == "ResourceNotFoundException"

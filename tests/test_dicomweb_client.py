"""DICOMweb part 1 with a client no one here wrote: dicomweb-client's searches, metadata and
deletes on a stored multi-series study, against what pydicom reads from the originals."""

from io import BytesIO
from urllib.parse import urlsplit

from pydicom import dcmread
from pydicom.dataset import Dataset

from studydata import make_study, to_bytes

BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}


def web_client(live_server):
    from dicomweb_client.api import DICOMwebClient

    return DICOMwebClient(url=f"{live_server}/dicomweb")


def assert_same_as_original(meta: dict, original: Dataset, base: str) -> None:
    """Element by element: the metadata is the original's data set; every binary value is a
    BulkDataURI naming its element under the instance's WADO-RS URL."""
    prefix = (f"{base}/dicomweb/studies/{original.StudyInstanceUID}/series/{original.SeriesInstanceUID}"
              f"/instances/{original.SOPInstanceUID}/bulk/")  # fmt: skip
    named = []

    def bulk(tag: str, vr: str, uri: str) -> bytes:
        named.append(uri)
        assert uri == prefix + tag.upper()
        return original[int(tag, 16)].value

    read = Dataset.from_json(meta, bulk_data_uri_handler=bulk)
    expected = [e for e in original if e.tag.group != 0x0002]
    assert [e.tag for e in read] == [e.tag for e in expected]
    for got, want in zip(read, expected):
        assert (got.VR, got.value) == (want.VR, want.value), want.keyword
    assert named == [prefix + f"{e.tag:08X}" for e in expected if e.VR in BINARY_VRS and e.value]


def test_dicomweb_client_searches_metadata_and_deletes(live_server):
    web = web_client(live_server)
    study = make_study((("CT", 3), ("MR", 2)), seed=21)
    other = make_study((("CT", 1),), seed=22, PatientName="Roe^Richard", StudyDate="20230505")
    # dicomweb-client sends "Host: <hostname>" without the port (web.py sets headers['Host'] =
    # self.host): URLs in answers name the host as the client gave it, so here without the port
    base = "http://" + urlsplit(live_server).hostname
    stored = web.store_instances(datasets=study)
    assert len(stored.ReferencedSOPSequence) == 5
    assert stored.RetrieveURL == f"{base}/dicomweb/studies/{study[0].StudyInstanceUID}"
    assert web.store_instances(datasets=other, study_instance_uid=other[0].StudyInstanceUID).ReferencedSOPSequence
    originals = {ds.SOPInstanceUID: dcmread(BytesIO(to_bytes(ds))) for ds in study}
    study_uid, ct, mr = study[0].StudyInstanceUID, study[0].SeriesInstanceUID, study[3].SeriesInstanceUID

    # searches, with filters
    found = web.search_for_studies(search_filters={"PatientName": "doe*", "StudyDate": "20240101-"})
    assert [Dataset.from_json(s).StudyInstanceUID for s in found] == [study_uid]
    (found_study,) = [Dataset.from_json(s) for s in found]
    assert (found_study.NumberOfStudyRelatedSeries, found_study.NumberOfStudyRelatedInstances) == (2, 5)
    assert list(found_study.ModalitiesInStudy) == ["CT", "MR"] and found_study.PatientName == "Doe^Jane"
    assert len(web.search_for_studies()) == 2
    assert len(web.search_for_studies(limit=1, offset=1)) == 1
    series = [Dataset.from_json(s) for s in web.search_for_series(study_uid)]
    assert [(s.SeriesInstanceUID, s.Modality, s.NumberOfSeriesRelatedInstances) for s in series] == [
        (ct, "CT", 3), (mr, "MR", 2)
    ]  # fmt: skip
    assert [Dataset.from_json(s).SeriesInstanceUID for s in web.search_for_series(search_filters={"Modality": "MR"})] == [mr]
    instances = [Dataset.from_json(i) for i in web.search_for_instances(study_uid, ct, fields=["RescaleIntercept"])]
    assert [i.InstanceNumber for i in instances] == [1, 2, 3]
    assert [i.SOPInstanceUID for i in instances] == [ds.SOPInstanceUID for ds in study[:3]]
    assert [i.RescaleIntercept for i in instances] == [ds.RescaleIntercept for ds in study[:3]]
    everywhere = web.search_for_instances(search_filters={"00100020": "PID-21"}, get_remaining=True)
    assert len(everywhere) == 5

    # metadata: study, series, instance, each as pydicom reads the originals
    study_meta = web.retrieve_study_metadata(study_uid)
    assert len(study_meta) == 5
    for meta in study_meta:
        sop = meta["00080018"]["Value"][0]
        assert_same_as_original(meta, originals[sop], base)
    series_meta = web.retrieve_series_metadata(study_uid, mr)
    assert [m["00080018"]["Value"][0] for m in series_meta] == [ds.SOPInstanceUID for ds in study[3:]]
    instance_meta = web.retrieve_instance_metadata(study_uid, mr, study[4].SOPInstanceUID)
    assert_same_as_original(instance_meta, originals[study[4].SOPInstanceUID], base)

    # deletes: an instance, a series, a study
    web.delete_instance(study_uid, ct, study[2].SOPInstanceUID)
    assert len(web.search_for_instances(study_uid, ct)) == 2
    web.delete_series(study_uid, mr)
    assert [Dataset.from_json(s).Modality for s in web.search_for_series(study_uid)] == ["CT"]
    web.delete_study(study_uid)
    assert web.search_for_studies(search_filters={"StudyInstanceUID": study_uid}) == []
    # an Orthanc user's "delete all studies": a loop over QIDO and DELETE
    for found in web.search_for_studies():
        web.delete_study(Dataset.from_json(found).StudyInstanceUID)
    assert web.search_for_studies() == []

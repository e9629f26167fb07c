"""The one pipeline: Train → Evaluate → CheckQuality → Baseline → Register, or Fail with the missed figures.

Baseline runs the serving image's ``monitor baseline`` on the model that passed the gate (its answers on its
own training users: docs/monitoring.md); Register records those two files as the package's model data
quality (``ModelMetrics.ModelDataQuality``), where ``scripts/monitor.sh create`` finds the baseline of the
model an endpoint serves.

Built with ``--triton`` (``Settings.triton_image``), a passed gate also runs ExportTriton (the training
image's ``python -m ncf_core export --packages``) and RegisterTriton (the ``ncf.tar.gz`` package on AWS's
Triton image, SAGEMAKER_TRITON_DEFAULT_MODEL_NAME=ncf, in TritonModelPackageGroupName): a second model
package, with the same approval status and model statistics, that deploy.sh --model-package-group deploys.

Built with the SageMaker Python SDK 2.x on our two images; the domain stays in ``ncf_core`` and the
container contracts in ``ncf_sagemaker`` (the Evaluate step runs the training image's ``evaluate``
program, whose paths and report names come from there). Parameters: ``ncf_mlops.parameters``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ncf_launch.aws_client import SERVE_INSTANCE_TYPE, TRAIN_INSTANCE_TYPE, load_metric_definitions
from ncf_sagemaker import contract
from ncf_sagemaker import evaluation_job as report

from . import parameters as P
from .session import no_instance_metadata, offline_session

DEFAULT_NAME = "ncf-pipeline"
TRAIN_STEP = "Train"
EVALUATE_STEP = "Evaluate"
GATE_STEP = "CheckQuality"
BASELINE_STEP = "Baseline"
REGISTER_STEP = "Register"
FAIL_STEP = "QualityGateFailed"
EXPORT_TRITON_STEP = "ExportTriton"
REGISTER_TRITON_STEP = "RegisterTriton"
TRITON_OUTPUT = "triton"
TRITON_NAME = "ncf"  # export's --name: the package ncf.tar.gz, its entry ensemble ncf (top-K)
TRITON_INFERENCE_INSTANCE_TYPES = ("ml.g4dn.xlarge", "ml.g5.xlarge", "ml.c5.xlarge", "ml.m5.xlarge")
EVALUATION_PROPERTY_FILE = "EvaluationReport"
EVALUATE_PROGRAM = "evaluate"  # the console script in the training image (pyproject.toml)
MONITOR_PROGRAM = "monitor"  # the console script in the serving image (pyproject.toml)
# What the serving image answers (containers/serve/README.md) and where a registered model may run.
CONTENT_TYPES = ("application/json", "application/jsonlines", "text/csv")
INFERENCE_INSTANCE_TYPES = (SERVE_INSTANCE_TYPE, "ml.m5.xlarge", "ml.c5.large", "ml.c5.xlarge")
TRANSFORM_INSTANCE_TYPES = (TRAIN_INSTANCE_TYPE, "ml.c5.xlarge")


@dataclass(frozen=True)
class Settings:
    """What the definition is built from (the launcher resolves each: ``ncf_mlops.commands``)."""

    name: str
    region: str
    role_arn: str
    bucket: str
    prefix: str  # S3 prefix under the bucket for models and evaluation reports
    train_image: str
    serve_image: str
    data_uri: str  # default of InputDataUri and TestDataUri
    tracking_uri: str = ""  # default of MlflowTrackingUri (empty: no experiment tracking)
    triton_image: str = ""  # set: also export and register the Triton package on this image

    def s3(self, *parts: str) -> str:
        return "/".join([f"s3://{self.bucket}", self.prefix.strip("/"), *parts])


def _sdk_parameter(p: P.Parameter) -> Any:
    from sagemaker.workflow.parameters import ParameterFloat, ParameterInteger, ParameterString

    kind = {str: ParameterString, int: ParameterInteger, float: ParameterFloat}[p.kind]
    if p.choices:
        return ParameterString(name=p.name, default_value=p.default, enum_values=list(p.choices))
    return kind(name=p.name, default_value=p.default)


def build(settings: Settings, session: Any = None) -> Any:
    """The ``sagemaker.workflow.pipeline.Pipeline`` (compiling it makes no AWS call).

    ``session`` defaults to the offline ``PipelineSession``; a ``LocalPipelineSession`` (``ncf_mlops.local``)
    gives the same steps run by the SDK's local mode, except that the Register step, which local mode does
    not run, is a ModelStep that creates the (local) model instead (its name says so:
    ``Register-CreateModel``); ``ncf_mlops.local`` sends the CreateModelPackage request itself.
    """
    from sagemaker.estimator import Estimator
    from sagemaker.inputs import TrainingInput
    from sagemaker.model import Model
    from sagemaker.model_metrics import ModelMetrics
    from sagemaker.processing import ProcessingInput, ProcessingOutput, Processor
    from sagemaker.workflow.condition_step import ConditionStep
    from sagemaker.workflow.conditions import ConditionGreaterThanOrEqualTo
    from sagemaker.workflow.execution_variables import ExecutionVariables
    from sagemaker.workflow.fail_step import FailStep
    from sagemaker.workflow.functions import Join, JsonGet
    from sagemaker.workflow.model_step import ModelStep
    from sagemaker.workflow.pipeline import Pipeline
    from sagemaker.workflow.properties import PropertyFile
    from sagemaker.workflow.steps import ProcessingStep, TrainingStep

    local = session is not None and getattr(session, "local_mode", False)
    session = session or offline_session(settings.region, settings.bucket)
    declared = P.parameters(settings.data_uri, settings.tracking_uri, triton=bool(settings.triton_image))
    param = {p.name: _sdk_parameter(p) for p in declared}
    # Both steps log to MLflow when the parameter is set, their runs tagged with this execution.
    tracking_env = {
        contract.MLFLOW_TRACKING_URI_ENV: param[P.MLFLOW_TRACKING_URI],
        contract.PIPELINE_EXECUTION_ARN_ENV: ExecutionVariables.PIPELINE_EXECUTION_ARN,
    }

    estimator = Estimator(
        image_uri=settings.train_image,
        role=settings.role_arn,
        instance_count=param[P.TRAIN_INSTANCE_COUNT],
        instance_type=param[P.TRAIN_INSTANCE_TYPE_PARAM],
        output_path=settings.s3("models"),
        base_job_name="ncf-train",
        hyperparameters={p.name: param[p.name] for p in P.hyperparameter_parameters()},
        metric_definitions=load_metric_definitions(),
        disable_profiler=True,  # our image has no smdebug: no profiler or debugger hook
        debugger_hook_config=False,
        environment=tracking_env,
        sagemaker_session=session,
    )
    train = TrainingStep(
        name=TRAIN_STEP,
        step_args=estimator.fit(
            inputs={
                contract.TRAIN_CHANNEL: TrainingInput(
                    s3_data=param[P.INPUT_DATA], distribution="FullyReplicated"
                )
            }
        ),
    )
    model_data = train.properties.ModelArtifacts.S3ModelArtifacts

    evaluation_uri = _execution_prefix(settings, "evaluation")
    evaluator = Processor(
        role=settings.role_arn,
        image_uri=settings.train_image,
        instance_count=param[P.EVAL_INSTANCE_COUNT],
        instance_type=param[P.EVAL_INSTANCE_TYPE],
        entrypoint=[EVALUATE_PROGRAM],
        base_job_name="ncf-evaluate",
        env=tracking_env | {contract.EVALUATED_TRAINING_JOB_ENV: train.properties.TrainingJobName},
        sagemaker_session=session,
    )
    evaluation_file = PropertyFile(
        name=EVALUATION_PROPERTY_FILE,
        output_name=contract.PROCESSING_EVALUATION,
        path=contract.EVALUATION_REPORT,
    )
    evaluate = ProcessingStep(
        name=EVALUATE_STEP,
        step_args=evaluator.run(
            inputs=[
                _model_input(model_data),
                ProcessingInput(
                    input_name=contract.PROCESSING_TEST,
                    source=param[P.TEST_DATA],
                    destination=contract.processing_container_path(contract.PROCESSING_TEST),
                ),
            ],
            outputs=[
                ProcessingOutput(
                    output_name=contract.PROCESSING_EVALUATION,
                    source=contract.processing_container_path(contract.PROCESSING_EVALUATION),
                    destination=evaluation_uri,
                )
            ],
            arguments=["--k", str(P.GATE_K)],
        ),
        property_files=[evaluation_file],
    )

    hr_name, ndcg_name = (report.metric_name(kind, P.GATE_K) for kind in ("hr", "ndcg"))
    hr, ndcg = (
        JsonGet(step_name=EVALUATE_STEP, property_file=evaluation_file, json_path=report.json_path(name))
        for name in (hr_name, ndcg_name)
    )

    # The model's own answers on its training users: what `monitor` compares a live endpoint with.
    baseline_uri = _execution_prefix(settings, "baseline")
    baseliner = Processor(
        role=settings.role_arn,
        image_uri=settings.serve_image,
        instance_count=1,
        instance_type=param[P.EVAL_INSTANCE_TYPE],
        entrypoint=[MONITOR_PROGRAM, "baseline"],
        base_job_name="ncf-baseline",
        sagemaker_session=session,
    )
    baseline = ProcessingStep(
        name=BASELINE_STEP,
        step_args=baseliner.run(
            inputs=[_model_input(model_data)],
            outputs=[
                ProcessingOutput(
                    output_name=contract.PROCESSING_BASELINE,
                    source=contract.processing_container_path(contract.PROCESSING_BASELINE),
                    destination=baseline_uri,
                )
            ],
            arguments=["--k", str(P.GATE_K)],
        ),
    )

    model = Model(
        image_uri=settings.serve_image,
        model_data=model_data,
        role=settings.role_arn,
        sagemaker_session=session,
    )
    register = ModelStep(
        name=REGISTER_STEP,
        step_args=model.create()
        if local
        else model.register(
            content_types=list(CONTENT_TYPES),
            response_types=list(CONTENT_TYPES),
            inference_instances=list(INFERENCE_INSTANCE_TYPES),
            transform_instances=list(TRANSFORM_INSTANCE_TYPES),
            model_package_group_name=param[P.MODEL_PACKAGE_GROUP],
            approval_status=param[P.APPROVAL_STATUS],
            model_metrics=ModelMetrics(
                model_statistics=_json_file(evaluation_uri, contract.EVALUATION_REPORT),
                model_data_statistics=_json_file(baseline_uri, contract.MONITOR_STATISTICS),
                model_data_constraints=_json_file(baseline_uri, contract.MONITOR_CONSTRAINTS),
            ),
            description=f"NCF recommender; HR@{P.GATE_K} and NDCG@{P.GATE_K} in its model statistics, "
            "its monitoring baseline in its model data quality",
        ),
        depends_on=[baseline],
    )
    message = [f"quality gate failed: {hr_name}=", hr, f" (minimum {P.MIN_HR}=", param[P.MIN_HR], "), "]
    message += [f"{ndcg_name}=", ndcg, f" (minimum {P.MIN_NDCG}=", param[P.MIN_NDCG], ")"]
    fail = FailStep(name=FAIL_STEP, error_message=Join(on="", values=message))
    gate = ConditionStep(
        name=GATE_STEP,
        conditions=[
            ConditionGreaterThanOrEqualTo(left=hr, right=param[P.MIN_HR]),
            ConditionGreaterThanOrEqualTo(left=ndcg, right=param[P.MIN_NDCG]),
        ],
        if_steps=[
            baseline,
            register,
            *triton_steps(settings, session, param, model_data, evaluation_uri, local),
        ],
        else_steps=[fail],
    )
    return Pipeline(
        name=settings.name,
        parameters=[param[p.name] for p in declared],
        steps=[train, evaluate, gate],
        sagemaker_session=session,
    )


def triton_steps(
    settings: Settings, session: Any, param: dict, model_data: Any, evaluation_uri: Any, local: bool
) -> list:
    """ExportTriton → RegisterTriton, when the pipeline is built with a Triton image (else none)."""
    if not settings.triton_image:
        return []
    if local:
        raise ValueError("the Triton steps are not in --local runs")
    from sagemaker.model import Model
    from sagemaker.model_metrics import ModelMetrics
    from sagemaker.processing import ProcessingOutput, Processor
    from sagemaker.workflow.functions import Join
    from sagemaker.workflow.model_step import ModelStep
    from sagemaker.workflow.steps import ProcessingStep

    model_in = contract.processing_container_path(contract.PROCESSING_MODEL)
    out = contract.processing_container_path(TRITON_OUTPUT)
    command = (
        f"set -e; mkdir -p /tmp/ncf-model; tar -xzf {model_in}/{contract.MODEL_ARCHIVE} -C /tmp/ncf-model; "
        f"python -m ncf_core export --model-dir /tmp/ncf-model --to /tmp/ncf-triton --name {TRITON_NAME} "
        f"--top-k {P.GATE_K} --packages {out}"
    )
    triton_uri = _execution_prefix(settings, "triton")
    exporter = Processor(
        role=settings.role_arn,
        image_uri=settings.train_image,
        instance_count=1,
        instance_type=param[P.EVAL_INSTANCE_TYPE],
        entrypoint=["sh", "-c", command],
        base_job_name="ncf-export-triton",
        sagemaker_session=session,
    )
    export = ProcessingStep(
        name=EXPORT_TRITON_STEP,
        step_args=exporter.run(
            inputs=[_model_input(model_data)],
            outputs=[ProcessingOutput(output_name=TRITON_OUTPUT, source=out, destination=triton_uri)],
        ),
    )
    package = Model(
        image_uri=settings.triton_image,
        model_data=Join(on="/", values=[triton_uri, f"{TRITON_NAME}.tar.gz"]),
        env={"SAGEMAKER_TRITON_DEFAULT_MODEL_NAME": TRITON_NAME},
        role=settings.role_arn,
        sagemaker_session=session,
    )
    register = ModelStep(
        name=REGISTER_TRITON_STEP,
        step_args=package.register(
            content_types=["application/json"],
            response_types=["application/json"],
            inference_instances=list(TRITON_INFERENCE_INSTANCE_TYPES),
            transform_instances=list(TRITON_INFERENCE_INSTANCE_TYPES),
            model_package_group_name=param[P.TRITON_GROUP],
            approval_status=param[P.APPROVAL_STATUS],
            model_metrics=ModelMetrics(
                model_statistics=_json_file(evaluation_uri, contract.EVALUATION_REPORT)
            ),
            description=f"NCF top-{P.GATE_K} on Triton (KServe v2 JSON; docs/triton.md)",
        ),
        depends_on=[export],
    )
    return [export, register]


def _execution_prefix(settings: Settings, name: str) -> Any:
    """``s3://BUCKET/PREFIX/NAME/<execution id>``: where one execution's step writes its output."""
    from sagemaker.workflow.execution_variables import ExecutionVariables
    from sagemaker.workflow.functions import Join

    return Join(on="/", values=[settings.s3(name), ExecutionVariables.PIPELINE_EXECUTION_ID])


def _model_input(model_data: Any) -> Any:
    """The trained ``model.tar.gz`` as a processing job's ``model`` input (Evaluate, Baseline, Triton)."""
    from sagemaker.processing import ProcessingInput

    return ProcessingInput(
        input_name=contract.PROCESSING_MODEL,
        source=model_data,
        destination=contract.processing_container_path(contract.PROCESSING_MODEL),
    )


def _json_file(prefix: Any, name: str) -> Any:
    """A JSON file under an execution's prefix, as a model package's metrics source."""
    from sagemaker.model_metrics import MetricsSource
    from sagemaker.workflow.functions import Join

    return MetricsSource(content_type="application/json", s3_uri=Join(on="/", values=[prefix, name]))


def definition(settings: Settings) -> str:
    """The pipeline's JSON definition, as CreatePipeline takes it (compiled without any network call)."""
    with no_instance_metadata():
        return build(settings).definition()
